//! `sotto-signaling`: the relay that carries SDP, ICE and handshake messages between peers.

fn main() {
    eprintln!("sotto-signaling: the server is not built yet (see issue 5)");
    std::process::exit(1);
}
