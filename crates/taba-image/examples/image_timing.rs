//! Times the image store on one archive: first import, repeated import, resolve, and an overlay
//! mount + unmount. `cargo run --release -p taba-image --example image_timing -- IMAGE.tar`
//! (as root). Prints medians; no pass/fail.

use std::time::{Duration, Instant};

use taba_image::ImageStore;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tar = std::env::args()
        .nth(1)
        .ok_or("usage: image_timing IMAGE.tar")?;
    let dir = tempfile::tempdir()?;
    let mut first = vec![];
    for i in 0..5 {
        let store = ImageStore::open(&dir.path().join(format!("s{i}")))?;
        let t = Instant::now();
        store.import(tar.as_ref())?;
        first.push(t.elapsed());
    }
    let store = ImageStore::open(&dir.path().join("s0"))?;
    let again: Vec<_> = (0..20)
        .map(|_| {
            let t = Instant::now();
            store.import(tar.as_ref()).map(|_| t.elapsed())
        })
        .collect::<Result<_, _>>()?;
    let summary = store.list()?.remove(0);
    let reference = summary.refs.first().cloned().unwrap_or(summary.id.clone());
    let resolve: Vec<_> = (0..100)
        .map(|_| {
            let t = Instant::now();
            store.resolve(&reference).map(|_| t.elapsed())
        })
        .collect::<Result<_, _>>()?;
    let image = store.resolve(&reference)?.ok_or("image vanished")?;
    let (mut mount, mut unmount) = (vec![], vec![]);
    for i in 0..20 {
        let c = dir.path().join(format!("c{i}"));
        let t = Instant::now();
        store.mount_rootfs(&image, &c)?;
        mount.push(t.elapsed());
        let t = Instant::now();
        store.unmount_rootfs(&c)?;
        unmount.push(t.elapsed());
    }
    println!(
        "image {} ({} layers, {} bytes)",
        reference, summary.layers, summary.size
    );
    println!("first import   {:?}", median(first));
    println!("import again   {:?}", median(again));
    println!("resolve        {:?}", median(resolve));
    println!("mount rootfs   {:?}", median(mount));
    println!("unmount rootfs {:?}", median(unmount));
    Ok(())
}
