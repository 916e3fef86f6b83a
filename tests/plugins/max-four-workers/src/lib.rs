//! A site's config rules, written with the guest SDK: no pool may have more
//! than four workers on this machine. Replaces `builtin:pool-rules` when
//! named in `host.config_rules`.

use pitboss_guest::{ConfigRules, Diagnostic, HostConfig};

const MAX_WORKERS: u32 = 4;

struct MaxFourWorkers;

impl ConfigRules for MaxFourWorkers {
    fn validate(config: &HostConfig) -> Vec<Diagnostic> {
        config
            .pools
            .iter()
            .filter(|pool| pool.size > MAX_WORKERS)
            .map(|pool| {
                Diagnostic::error(
                    pool.field("size"),
                    format!("this site allows at most {MAX_WORKERS} workers per pool (got {})", pool.size),
                )
                .hint("split the work over several pools, or ask the operators for a bigger machine")
            })
            .collect()
    }
}

pitboss_guest::export_config_rules!(MaxFourWorkers);
