//! The engine's own SFU client (`sotto::transport::SfuTransport`) against this SFU: the two
//! sides of the offer contract in `signaling/PROTOCOL.md`, "SFU".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sotto::sframe::{CipherSuite, ReceiverContext, SenderContext};
use sotto::transport::{SfuTransport, SfuTransportConfig, seal};
use sotto_sfu::{Sfu, SfuConfig};

const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;

fn key(kid: u64) -> Vec<u8> {
    format!("engine member {kid}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_engine_members_hear_each_other_through_the_sfu() {
    let sfu = Arc::new(
        Sfu::start(SfuConfig {
            workers: 2,
            ..SfuConfig::default()
        })
        .unwrap(),
    );
    let mut members = Vec::new();
    for kid in 0..3u64 {
        let t = SfuTransport::new(SfuTransportConfig {
            udp_addrs: vec!["127.0.0.1:0".to_owned()],
            ..SfuTransportConfig::default()
        })
        .await
        .unwrap();
        let offer = t.create_offer().await.unwrap();
        let s = Arc::clone(&sfu);
        let answer =
            tokio::task::spawn_blocking(move || s.join("engine", &format!("p{kid}"), &offer))
                .await
                .unwrap()
                .unwrap();
        t.accept_answer(&answer).await.unwrap();
        t.connected(Duration::from_secs(30)).await.unwrap();
        members.push(t);
    }
    // What each member sealed: payload -> KID.
    let sent: Arc<Mutex<HashMap<Vec<u8>, u64>>> = Arc::default();
    let members: Vec<Arc<tokio::sync::Mutex<SfuTransport>>> = members
        .into_iter()
        .map(|m| Arc::new(tokio::sync::Mutex::new(m)))
        .collect();
    let mut frames = Vec::new();
    for m in &members {
        frames.push(m.lock().await.take_frames().unwrap());
    }
    for (kid, m) in members.iter().enumerate() {
        let (m, sent) = (Arc::clone(m), Arc::clone(&sent));
        tokio::spawn(async move {
            let kid = kid as u64;
            let mut tx = SenderContext::new(SUITE, kid, &key(kid)).unwrap();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for n in 0..1500u64 {
                tick.tick().await;
                let frame = seal(&mut tx, format!("engine {kid} frame {n}").as_bytes()).unwrap();
                sent.lock().unwrap().insert(frame.as_bytes().to_vec(), kid);
                if m.lock()
                    .await
                    .send_audio(&frame, n * 960, 30, true)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    for (me, rx) in frames.iter_mut().enumerate() {
        let mut open = ReceiverContext::new();
        for kid in 0..3 {
            open.add_key(SUITE, kid, &key(kid)).unwrap();
        }
        let mut heard: HashMap<u64, usize> = HashMap::new();
        while !(0..3u64)
            .filter(|k| *k != me as u64)
            .all(|k| heard.get(&k).is_some_and(|n| *n >= 25))
        {
            let f = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("frames keep coming")
                .expect("open stream");
            let sender = *sent
                .lock()
                .unwrap()
                .get(f.payload.as_ref())
                .expect("byte-identical to a sealed frame");
            let mut buf = f.payload.to_vec();
            let plain = open.decrypt_in_place(&[], &mut buf).unwrap();
            assert_eq!(plain.header.kid, sender);
            assert_ne!(sender, me as u64, "never its own voice");
            *heard.entry(sender).or_default() += 1;
        }
    }
    for m in &members {
        let _ = m.lock().await.close().await;
    }
}
