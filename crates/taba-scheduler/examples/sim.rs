//! Run the simulator without the whole `taba` binary:
//! `cargo run --release -p taba-scheduler --example sim -- NODES TASKS [SEED] [WORKERS] [SHARDS 0|1] [FEATURES 0|1]`.

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: u64| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let cfg = taba_scheduler::sim::SimConfig {
        nodes: num(1, 1000) as u32,
        tasks: num(2, 100_000),
        seed: num(3, 1),
        mix: taba_scheduler::sim::Mix::default(),
        workers: num(4, 2) as usize,
        fill: 0.7,
        shards: num(5, 1) == 1,
        features: num(6, 1) == 1,
    };
    let r = taba_scheduler::sim::run(&cfg).expect("simulation runs");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    eprintln!("{r:?}");
    println!("{}", r.last_line(rss_kib / 1024));
}
