//! `pitboss recycle`: an operator's recycling lever
//! (`Admin.RecycleWorker` on the admin socket).

use std::process::ExitCode;

use anyhow::Result;

use super::client::{with_admin, AdminSocket};

#[derive(clap::Args)]
pub struct RecycleArgs {
    /// The pool of the worker.
    pool: String,
    /// The worker's id, as `pitboss status` shows it.
    worker: u32,
    #[command(flatten)]
    admin: AdminSocket,
}

pub fn recycle(args: &RecycleArgs) -> Result<ExitCode> {
    let answer = with_admin(&args.admin, async |mut admin| admin.recycle(&args.pool, args.worker).await)?;
    match answer {
        Ok(()) => {
            println!("worker {} of pool `{}` is draining; its replacement is starting", args.worker, args.pool);
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("error: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}
