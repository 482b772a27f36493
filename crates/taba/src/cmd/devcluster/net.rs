//! The dev cluster's network: a bridge in the host's namespace with the
//! server's address, and per agent a network namespace joined to it by a
//! veth pair. Made and removed with `ip` (iproute2).
//!
//! ```text
//! host netns:  <prefix>-br0 10.213.0.1/24  (server listens here and on 127.0.0.1)
//!                 |-- <prefix>-v1 ==veth== eth0 10.213.0.2  in netns <prefix>-n1 (agent n1)
//!                 |-- <prefix>-v2 ==veth== eth0 10.213.0.3  in netns <prefix>-n2 (agent n2)
//! ```

use anyhow::{bail, Context};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

/// Names and addresses of one dev cluster's network.
#[derive(Clone, Debug)]
pub struct NetPlan {
    prefix: String,
    base: u32,
    len: u8,
}

/// One thing made on the host, to be removed at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Made {
    /// A bridge (host namespace).
    Bridge(String),
    /// A network namespace (`/run/netns/NAME`).
    Netns(String),
    /// The host end of a veth pair.
    Veth(String),
}

impl NetPlan {
    /// `prefix` names everything (`taba` -> `taba-br0`, `taba-n1`,
    /// `taba-v1`); `subnet` is `a.b.c.d/len`, with room for the bridge and
    /// `agents` addresses.
    pub fn new(prefix: &str, subnet: &str, agents: u32) -> anyhow::Result<NetPlan> {
        if prefix.is_empty()
            || prefix.len() > 8
            || !prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            bail!("net prefix {prefix:?}: must be 1 to 8 of a-z, 0-9, '-' (interface names are short)");
        }
        let (ip, len) = parse_cidr(subnet).with_context(|| format!("--subnet {subnet:?}"))?;
        if !(8..=28).contains(&len) {
            bail!("--subnet {subnet:?}: the prefix length must be between 8 and 28");
        }
        if !ip.is_private() {
            bail!("--subnet {subnet:?}: must be a private (RFC 1918) range");
        }
        let mask = u32::MAX << (32 - len);
        let base = u32::from(ip) & mask;
        let hosts = (1u64 << (32 - len)) - 2;
        if u64::from(agents) + 1 > hosts {
            bail!("--subnet {subnet:?}: too small for the bridge and {agents} agents");
        }
        Ok(NetPlan {
            prefix: prefix.to_string(),
            base,
            len,
        })
    }

    /// The subnet, `a.b.c.d/len`.
    pub fn subnet(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.base), self.len)
    }
    /// The bridge's name.
    pub fn bridge(&self) -> String {
        format!("{}-br0", self.prefix)
    }
    /// The bridge's (and the server's) address.
    pub fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }
    /// Agent `k`'s (1-based) network namespace.
    pub fn netns(&self, k: u32) -> String {
        format!("{}-n{k}", self.prefix)
    }
    /// The path of agent `k`'s network namespace.
    pub fn netns_path(&self, k: u32) -> PathBuf {
        PathBuf::from("/run/netns").join(self.netns(k))
    }
    /// The host end of agent `k`'s veth pair.
    pub fn veth(&self, k: u32) -> String {
        format!("{}-v{k}", self.prefix)
    }
    fn peer(&self, k: u32) -> String {
        format!("{}-p{k}", self.prefix)
    }
    /// Agent `k`'s address.
    pub fn agent_ip(&self, k: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1 + k)
    }
    /// The cgroup under which agent `k` makes its allocations' cgroups.
    pub fn cgroup_parent(&self, k: u32) -> String {
        format!("taba/{}-n{k}", self.prefix)
    }

    /// Refuse when the names or the subnet are already in use on the host.
    pub fn check_free(&self, agents: u32) -> anyhow::Result<()> {
        let mut names = vec![self.bridge()];
        for k in 1..=agents {
            names.push(self.veth(k));
            names.push(self.peer(k));
            if self.netns_path(k).exists() {
                bail!(
                    "network namespace {} exists: another `taba dev --agents` runs, or one was killed \
                     (remove it with `ip netns del {}`)",
                    self.netns(k),
                    self.netns(k)
                );
            }
        }
        for n in names {
            if std::path::Path::new("/sys/class/net").join(&n).exists() {
                bail!(
                    "network interface {n} exists: another `taba dev --agents` runs, or one was killed \
                     (remove it with `ip link del {n}`)"
                );
            }
        }
        let mine = (self.base, self.len);
        for (net, line) in host_networks()? {
            if overlaps(mine, net) {
                bail!(
                    "--subnet {}: already used on this host ({}); pick another private range",
                    self.subnet(),
                    line.trim()
                );
            }
        }
        Ok(())
    }

    /// Make the bridge with the server's address.
    pub fn make_bridge(&self, made: &mut Vec<Made>) -> anyhow::Result<()> {
        let br = self.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        made.push(Made::Bridge(br.clone()));
        ip(&[
            "addr",
            "add",
            &format!("{}/{}", self.bridge_ip(), self.len),
            "dev",
            &br,
        ])?;
        ip(&["link", "set", &br, "up"])
    }

    /// Make agent `k`'s namespace, joined to the bridge, with its address.
    pub fn make_agent_net(&self, k: u32, made: &mut Vec<Made>) -> anyhow::Result<()> {
        let (ns, veth, peer) = (self.netns(k), self.veth(k), self.peer(k));
        ip(&["netns", "add", &ns])?;
        made.push(Made::Netns(ns.clone()));
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
        made.push(Made::Veth(veth.clone()));
        ip(&["link", "set", &veth, "master", &self.bridge(), "up"])?;
        ip(&["link", "set", &peer, "netns", &ns])?;
        ip(&["-n", &ns, "link", "set", &peer, "name", "eth0"])?;
        let addr = format!("{}/{}", self.agent_ip(k), self.len);
        ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])
    }
}

/// Remove what was made, last first; a thing already gone is fine.
pub fn remove(made: &[Made]) -> Vec<String> {
    let mut errors = Vec::new();
    for m in made.iter().rev() {
        let r = match m {
            // Deleting the namespace destroys the veth end in it, and so the pair.
            Made::Netns(ns) => std::path::Path::new("/run/netns")
                .join(ns)
                .exists()
                .then(|| ip(&["netns", "del", ns])),
            Made::Veth(n) | Made::Bridge(n) => std::path::Path::new("/sys/class/net")
                .join(n)
                .exists()
                .then(|| ip(&["link", "del", n])),
        };
        if let Some(Err(e)) = r {
            errors.push(format!("{e:#}"));
        }
    }
    errors
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2); install it with `apt-get install iproute2`")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn parse_cidr(s: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/').context("expected a.b.c.d/len")?;
    let ip: Ipv4Addr = ip.parse().context("not an IPv4 address")?;
    let len: u8 = len.parse().context("not a prefix length")?;
    if len > 32 {
        bail!("prefix length above 32");
    }
    Ok((ip, len))
}

/// Networks of the host's IPv4 addresses and routes (the default route
/// aside), with the line that names each.
fn host_networks() -> anyhow::Result<Vec<((u32, u8), String)>> {
    let mut out = Vec::new();
    for args in [
        &["-o", "-4", "addr", "show"][..],
        &["-4", "route", "show", "table", "all"][..],
    ] {
        let o = Command::new("ip")
            .args(args)
            .output()
            .context("running ip (iproute2)")?;
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            for word in line.split_whitespace() {
                if let Ok((ip, len)) = parse_cidr(word) {
                    out.push(((u32::from(ip), len), line.to_string()));
                }
            }
        }
    }
    Ok(out)
}

fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names_and_addresses() {
        let p = NetPlan::new("taba", "10.213.0.0/24", 3).unwrap();
        assert_eq!(p.bridge(), "taba-br0");
        assert_eq!(p.netns(2), "taba-n2");
        assert_eq!(p.veth(3), "taba-v3");
        assert_eq!(p.bridge_ip(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(p.agent_ip(1), Ipv4Addr::new(10, 213, 0, 2));
        assert_eq!(p.cgroup_parent(1), "taba/taba-n1");
        assert_eq!(p.subnet(), "10.213.0.0/24");
        for (prefix, subnet, n, want) in [
            ("Taba", "10.213.0.0/24", 3, "net prefix"),
            ("verylongname", "10.213.0.0/24", 3, "net prefix"),
            ("taba", "10.213.0.0", 3, "--subnet"),
            ("taba", "8.8.8.0/24", 3, "private"),
            ("taba", "10.213.0.0/28", 14, "too small"),
            ("taba", "10.213.0.0/29", 3, "between 8 and 28"),
        ] {
            let e = format!("{:#}", NetPlan::new(prefix, subnet, n).unwrap_err());
            assert!(e.contains(want), "{prefix} {subnet}: {e}");
        }
    }

    #[test]
    fn overlapping_networks() {
        let net = |s: &str| {
            let (ip, len) = parse_cidr(s).unwrap();
            (u32::from(ip), len)
        };
        assert!(overlaps(net("10.213.0.0/24"), net("10.213.0.7/32")));
        assert!(overlaps(net("10.213.0.0/24"), net("10.0.0.0/8")));
        assert!(!overlaps(net("10.213.0.0/24"), net("10.213.1.0/24")));
        assert!(!overlaps(net("10.213.0.0/24"), net("192.0.2.2/24")));
    }
}
