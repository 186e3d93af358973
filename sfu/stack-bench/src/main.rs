//! Measures what one WebRTC stack costs the SFU per forwarded audio packet, Sans-I/O and in
//! memory: for webrtc-rs `rtc` (what `sotto-sfu` is built on) and for str0m in RTP mode.
//!
//! For each stack: an SFU side (one connection per client, as the SFU has) and four clients (one
//! sender, three receivers) connect with real ICE, DTLS and SRTP by handing datagrams to one
//! another on a virtual clock. Then the sender makes one SRTP datagram per 20 ms of media time
//! and the SFU side, timed, decrypts it, takes the RTP packet, rewrites SSRC and sequence number
//! for each receiver, keeps the audio level extension and encrypts the three copies. The
//! receivers decrypt the copies (untimed) and count them, so no stack is measured doing less.
//!
//! Usage: `stack-bench [PACKETS] [--only rtc|str0m] [--rtc-srtp gcm128|gcm256]`.

mod crypto;
mod net;
mod rtc_stack;
mod str0m_stack;

use std::time::Duration;

/// The Opus payload forwarded (about what a 20 ms frame at 32 kbit/s plus SFrame is).
pub const PAYLOAD_LEN: usize = 80;
/// Media time between two packets of the sender.
pub const FRAME: Duration = Duration::from_millis(20);
/// RTP timestamp ticks per packet (48 kHz).
pub const TICKS: u32 = 960;
/// Receivers of each packet.
pub const RECEIVERS: usize = 3;
/// Packets forwarded before the timing starts.
pub const WARMUP: usize = 2_000;

/// One stack's run: packets to forward, whether `rtc` negotiates AES-256-GCM.
type Run = fn(usize, bool) -> Result<Report, String>;

/// What one stack's run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Packets timed.
    pub packets_in: u64,
    /// Nanoseconds of the SFU side's forwarding over the timed packets.
    pub forward_ns: u128,
    /// The part of it from the datagram to the RTP packet in the application's hands.
    pub receive_ns: u128,
    /// Nanoseconds the SFU side spent on everything else meanwhile (its timers, the clients'
    /// RTCP and ICE keepalives), over the same packets.
    pub other_ns: u128,
    /// Forwarded packets the receivers decrypted, with the right payload, over the timed
    /// packets.
    pub received: u64,
    /// SRTP protection profile negotiated.
    pub srtp_profile: String,
    /// Size of the SRTP datagram the SFU side takes in.
    pub bytes_in: usize,
    /// Size of each SRTP datagram it sends out.
    pub bytes_out: usize,
}

impl Report {
    fn json(&self) -> String {
        let forwarded = self.packets_in * RECEIVERS as u64;
        format!(
            "{{\"ns_per_forwarded_packet\": {:.0}, \"ns_per_packet_in\": {:.0}, \
             \"receive_ns_per_packet_in\": {:.0}, \"send_ns_per_forwarded_packet\": {:.0}, \
             \"received_by_clients\": {}, \"forwarded_expected\": {}, \
             \"other_sfu_ns_per_packet_in\": {:.0}, \"srtp_profile\": \"{}\", \
             \"datagram_bytes_in\": {}, \"datagram_bytes_out\": {}}}",
            self.forward_ns as f64 / forwarded as f64,
            self.forward_ns as f64 / self.packets_in as f64,
            self.receive_ns as f64 / self.packets_in as f64,
            (self.forward_ns - self.receive_ns) as f64 / forwarded as f64,
            self.received,
            forwarded,
            self.other_ns as f64 / self.packets_in as f64,
            self.srtp_profile,
            self.bytes_in,
            self.bytes_out,
        )
    }
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut packets = 200_000usize;
    let mut only: Option<String> = None;
    let mut rtc_gcm256 = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--only" => only = args.next(),
            "--rtc-srtp" => rtc_gcm256 = args.next().as_deref() != Some("gcm128"),
            n => match n.parse() {
                Ok(n) => packets = n,
                Err(_) => {
                    eprintln!(
                        "usage: stack-bench [PACKETS] [--only rtc|str0m] [--rtc-srtp gcm128|gcm256]"
                    );
                    std::process::exit(2);
                }
            },
        }
    }
    let mut parts = Vec::new();
    let mut failed = false;
    let runs: [(&str, Run); 2] = [("rtc", rtc_stack::run), ("str0m", str0m_stack::run)];
    for (name, run) in runs {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        match run(packets, rtc_gcm256) {
            Ok(r) => {
                if r.received != r.packets_in * RECEIVERS as u64 {
                    eprintln!(
                        "{name}: receivers got {} of {}",
                        r.received,
                        r.packets_in * RECEIVERS as u64
                    );
                    failed = true;
                }
                parts.push(format!("\"{name}\": {}", r.json()));
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                failed = true;
            }
        }
    }
    if only.is_none() {
        match crypto::measure() {
            Ok(c) => parts.push(format!(
                "\"aes_256_gcm_ns\": {{\"ring_seal\": {:.0}, \"ring_open\": {:.0}, \
                 \"rustcrypto_seal\": {:.0}, \"rustcrypto_open\": {:.0}}}",
                c.ring_seal, c.ring_open, c.rustcrypto_seal, c.rustcrypto_open
            )),
            Err(e) => {
                eprintln!("crypto: {e}");
                failed = true;
            }
        }
    }
    println!("{{{}}}", parts.join(", "));
    if failed {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness itself: each stack connects, forwards every packet to every receiver, and
    /// the receivers get the sender's payloads (a stack doing nothing would fail here).
    #[test]
    fn each_stack_connects_and_every_forwarded_packet_arrives() {
        let runs: [(&str, Run); 2] = [("rtc", rtc_stack::run), ("str0m", str0m_stack::run)];
        for (name, run) in runs {
            let r = run(100, true).unwrap();
            assert_eq!(r.packets_in, 100, "{name}");
            assert_eq!(r.received, 100 * RECEIVERS as u64, "{name}");
            assert!(r.forward_ns > r.receive_ns && r.receive_ns > 0, "{name}");
            assert!(
                r.bytes_in > PAYLOAD_LEN && r.bytes_out > PAYLOAD_LEN,
                "{name}"
            );
        }
    }
}
