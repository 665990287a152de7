use super::*;
use std::sync::mpsc;
use std::time::Duration;

/// Runs `n` threads that arrive at `gate` and report what they got.
fn arrivals(gate: &Arc<Gate<u32>>, n: usize) -> mpsc::Receiver<Option<u32>> {
    let (tx, rx) = mpsc::channel();
    for _ in 0..n {
        let (g, tx) = (gate.clone(), tx.clone());
        std::thread::spawn(move || tx.send(g.arrive_and_wait().map(|v| *v)).unwrap());
    }
    rx
}

const SHORT: Duration = Duration::from_millis(30);
const LONG: Duration = Duration::from_secs(10);

#[test]
fn opens_when_the_machine_is_ready_after_every_vcpu() {
    let gate = Arc::new(Gate::new(3));
    let got = arrivals(&gate, 3);
    assert!(got.recv_timeout(SHORT).is_err(), "no machine yet");
    gate.open(Arc::new(7));
    for _ in 0..3 {
        assert_eq!(got.recv_timeout(LONG), Ok(Some(7)));
    }
    assert!(gate.is_open());
}

#[test]
fn the_last_vcpu_to_arrive_opens_it() {
    let gate = Arc::new(Gate::new(2));
    gate.open(Arc::new(5));
    let first = arrivals(&gate, 1);
    assert!(first.recv_timeout(SHORT).is_err(), "one vCPU still missing");
    assert!(!gate.is_open());
    // The last one goes on without anyone else's help.
    assert_eq!(gate.arrive_and_wait().map(|v| *v), Some(5));
    assert_eq!(first.recv_timeout(LONG), Ok(Some(5)));
}

#[test]
fn a_missing_vcpu_keeps_it_closed_until_aborted() {
    // A vCPU that failed to be created never arrives.
    let gate = Arc::new(Gate::new(2));
    let got = arrivals(&gate, 1);
    gate.open(Arc::new(1));
    assert!(got.recv_timeout(SHORT).is_err());
    gate.abort();
    assert_eq!(got.recv_timeout(LONG), Ok(None));
    // Aborted for good: a late arrival and a late machine change nothing.
    gate.open(Arc::new(2));
    assert_eq!(gate.arrive_and_wait(), None);
    assert!(!gate.is_open());
}

#[test]
fn an_open_gate_stays_open() {
    let gate = Gate::new(1);
    gate.open(Arc::new(9));
    assert_eq!(gate.arrive_and_wait().map(|v| *v), Some(9));
    gate.abort();
    assert!(gate.is_open());
}
