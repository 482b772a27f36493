//! Times one task cgroup's life on this host: create, apply, join a process,
//! kill and destroy. Needs root.
//!
//! `cargo run --release -p taba-cgroups --example lifecycle [-- ROUNDS]`
//!
//! No target of its own: it shows what cgroup work adds to a container
//! start (BENCHMARKS.md's container start target is <= crun's time).

use std::process::Command;
use std::time::{Duration, Instant};
use taba_cgroups::{Layout, Limits};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(50);
    let layout = Layout::detect()?;
    let top = format!("taba-bench-{}", std::process::id());
    let limits = Limits {
        cpu_mhz: 500,
        cpu_max_cores: Some(1.0),
        memory_bytes: 64 << 20,
        pids_max: 100,
    };
    let (mut create, mut apply, mut join, mut destroy) = (vec![], vec![], vec![], vec![]);
    for i in 0..rounds {
        let rel = format!("{top}/alloc{i}/task");
        let mut child = Command::new("sleep").arg("100").spawn()?;

        let t = Instant::now();
        let cg = layout.create(&rel)?;
        create.push(t.elapsed());

        let t = Instant::now();
        cg.apply(&limits)?;
        apply.push(t.elapsed());

        let t = Instant::now();
        cg.add_pid(child.id())?;
        join.push(t.elapsed());

        let t = Instant::now();
        cg.destroy()?;
        destroy.push(t.elapsed());
        child.wait()?;
    }
    layout.destroy(&top)?;
    println!(
        "{} layout, {rounds} rounds, medians: create {:?}, apply {:?}, join {:?}, kill+destroy {:?}",
        layout.version_name(),
        median(create),
        median(apply),
        median(join),
        median(destroy)
    );
    Ok(())
}
