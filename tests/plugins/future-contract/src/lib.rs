//! Built against a contract this host does not speak
//! (`pitboss:policy@0.2.0`): the host must refuse it naming both versions.

wit_bindgen::generate!({
    inline: r#"
        package pitboss:policy@0.2.0;

        interface routing {
            init: func(pool: string) -> result<_, string>;
            route: func(tool: string) -> u32;
        }

        world next {
            export routing;
        }
    "#,
});

struct Future;

impl exports::pitboss::policy::routing::Guest for Future {
    fn init(_pool: String) -> Result<(), String> {
        Ok(())
    }

    fn route(_tool: String) -> u32 {
        0
    }
}

export!(Future);
