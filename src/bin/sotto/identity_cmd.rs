//! `sotto identity`: create (on first use) and show this device's identity.

use std::path::PathBuf;

use clap::Args;
use sotto::handshake::{Identity, default_identity_path};

#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// Identity file (default: $XDG_CONFIG_HOME/sotto/identity.json or
    /// ~/.config/sotto/identity.json). Created, owner-only, if missing.
    #[arg(long, value_name = "PATH")]
    identity: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: IdentityArgs) -> Result<(), String> {
    let path = args.identity.unwrap_or_else(default_identity_path);
    let (identity, created) = Identity::load_or_create(&path).map_err(|e| e.to_string())?;
    let key = identity.public_key();
    if args.json {
        let out = serde_json::json!({
            "path": path,
            "created": created,
            "public_key": key.to_hex(),
            "fingerprint": key.fingerprint(),
        });
        println!("{out}");
    } else {
        if created {
            println!("created a new identity at {}", path.display());
        } else {
            println!("identity at {}", path.display());
        }
        println!("fingerprint: {}", key.fingerprint());
    }
    Ok(())
}
