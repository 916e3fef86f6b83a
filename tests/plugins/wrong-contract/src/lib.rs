//! Exports `pitboss:policy/routing@0.1.0` with the wrong types (`route`
//! returns a bare u32): the host must refuse it when loading, not fail per
//! request.

wit_bindgen::generate!({
    inline: r#"
        package pitboss:policy@0.1.0;

        interface routing {
            init: func(pool: string) -> result<_, string>;
            route: func(tool: string) -> u32;
        }

        world impostor {
            export routing;
        }
    "#,
});

struct Impostor;

impl exports::pitboss::policy::routing::Guest for Impostor {
    fn init(_pool: String) -> Result<(), String> {
        Ok(())
    }

    fn route(_tool: String) -> u32 {
        0
    }
}

export!(Impostor);
