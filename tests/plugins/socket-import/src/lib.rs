//! Hostile: tries to open a TCP connection in `init`, so the component
//! imports `wasi:sockets`; the host must refuse it before it runs.

use pitboss_guest::{Decision, PoolInfo, RequestView, Router, WorkerView};

struct Phones;

impl Router for Phones {
    fn init(_pool: PoolInfo) -> Result<Self, String> {
        std::net::TcpStream::connect("203.0.113.1:80").map_err(|err| err.to_string())?;
        Ok(Phones)
    }

    fn route(&mut self, _request: &RequestView, workers: &[WorkerView]) -> Decision {
        pitboss_guest::decide_least_loaded(workers)
    }
}

pitboss_guest::export_router!(Phones);
