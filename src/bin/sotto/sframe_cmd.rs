//! `sotto sframe encrypt|decrypt`: one frame at a time, hex in and hex out.

use clap::{Args, Subcommand};
use sotto::sframe::{CipherSuite, Header, ReceiverContext, SenderContext};

use crate::hexarg;

#[derive(Debug, Args)]
pub struct SframeArgs {
    #[command(subcommand)]
    op: Op,
}

#[derive(Debug, Subcommand)]
enum Op {
    /// Print header || ciphertext || tag of one frame as lowercase hex.
    Encrypt {
        /// Cipher suite, by RFC 9605 registry value (1-5; 4 is AES_128_GCM_SHA256_128).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=5))]
        suite: u16,
        /// Base key, hex (any non-zero length).
        #[arg(long, value_name = "HEX")]
        key: String,
        /// Key identifier.
        #[arg(long)]
        kid: u64,
        /// Frame counter.
        #[arg(long)]
        ctr: u64,
        /// Metadata authenticated with the frame but not encrypted, hex.
        #[arg(long, value_name = "HEX", default_value = "")]
        metadata: String,
        /// Plaintext, hex ("" for an empty frame).
        #[arg(value_name = "PLAINTEXT_HEX")]
        plaintext: String,
    },
    /// Print the plaintext of one frame as lowercase hex; on any failure print nothing on
    /// stdout, one line on stderr, and exit with status 1.
    Decrypt {
        /// Cipher suite, by RFC 9605 registry value (1-5).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=5))]
        suite: u16,
        /// Base key, hex.
        #[arg(long, value_name = "HEX")]
        key: String,
        /// Metadata the frame was sealed with, hex.
        #[arg(long, value_name = "HEX", default_value = "")]
        metadata: String,
        /// The whole SFrame frame (header || ciphertext || tag), hex.
        #[arg(value_name = "CIPHERTEXT_HEX")]
        ciphertext: String,
    },
}

pub fn run(args: SframeArgs) -> Result<(), String> {
    let out = match args.op {
        Op::Encrypt {
            suite,
            key,
            kid,
            ctr,
            metadata,
            plaintext,
        } => encrypt(suite, &key, kid, ctr, &metadata, &plaintext),
        Op::Decrypt {
            suite,
            key,
            metadata,
            ciphertext,
        } => decrypt(suite, &key, &metadata, &ciphertext),
    }?;
    println!("{out}");
    Ok(())
}

fn encrypt(
    suite: u16,
    key: &str,
    kid: u64,
    ctr: u64,
    metadata: &str,
    plaintext: &str,
) -> Result<String, String> {
    let suite = CipherSuite::from_id(suite).map_err(|e| e.to_string())?;
    let key = zeroize::Zeroizing::new(hexarg::decode("--key", key)?);
    let metadata = hexarg::decode("--metadata", metadata)?;
    let plaintext = hexarg::decode("plaintext", plaintext)?;
    let mut tx = SenderContext::new(suite, kid, &key)
        .map_err(|e| format!("sframe encrypt: {e}"))?
        .with_counter(ctr);
    let frame = tx
        .encrypt_to_vec(&metadata, &plaintext)
        .map_err(|e| format!("sframe encrypt: {e}"))?;
    Ok(hex::encode(frame))
}

fn decrypt(suite: u16, key: &str, metadata: &str, ciphertext: &str) -> Result<String, String> {
    let suite = CipherSuite::from_id(suite).map_err(|e| e.to_string())?;
    let key = zeroize::Zeroizing::new(hexarg::decode("--key", key)?);
    let metadata = hexarg::decode("--metadata", metadata)?;
    let frame = hexarg::decode("ciphertext", ciphertext)?;
    let fail = |e: sotto::sframe::SframeError| format!("sframe decrypt: {e}");
    // The frame names its KID; derive that KID's key from the base key.
    let (header, _) = Header::parse(&frame).map_err(fail)?;
    let mut rx = ReceiverContext::new();
    rx.add_key(suite, header.kid, &key).map_err(fail)?;
    let (_, plaintext) = rx.decrypt_to_vec(&metadata, &frame).map_err(fail)?;
    Ok(hex::encode(plaintext))
}
