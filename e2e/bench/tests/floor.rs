//! `parley-floor` end to end: the real relay binary on a loopback port, driven at a low rate.

use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::Duration;

use parley_bench::{clock, floor};

/// Stops the relay however the test ends.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

#[tokio::test]
async fn relay_carries_every_message_and_ack_and_reports_its_cpu() {
    clock::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let relay = Relay(
        Command::new(env!("CARGO_BIN_EXE_parley-floor"))
            .args(["relay", "--listen", &addr])
            .spawn()
            .expect("start parley-floor relay"),
    );
    // Wait for the relay to listen.
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "parley-floor relay did not listen on {addr} within 5 s");

    let steps = floor::drive(&addr, 4, &[400], 1, Some(relay.0.id()))
        .await
        .expect("drive the relay");
    assert_eq!(steps.len(), 1);
    let step = &steps[0];
    assert_eq!(step.offered_per_s, 400);
    assert_eq!(step.sent, 400, "4 pairs at 100/s each for 1 s");
    assert_eq!(step.acked, step.sent, "every message acked");
    assert_eq!(step.delivered, step.sent, "every message delivered");
    assert!(step.relay_us_per_msg.is_some(), "the relay's CPU was read");
    assert!(step.deliver.p50_ms >= 0.0 && step.deliver.p99_ms >= step.deliver.p50_ms);
}
