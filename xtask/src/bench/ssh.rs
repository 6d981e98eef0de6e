//! The SSH section of `cargo xtask bench`: scp of a large file directly to a
//! real sshd, through Sluice (recording on, a rule in the path), and through
//! an OpenSSH jump host (`ProxyJump`, the peer), in one run; then the round
//! trip of a small exec (`ssh … true`) over one multiplexed connection per
//! target, whose p50 difference is what the gateway adds per command.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_sandbox::{free_port, random_hex, wait_for_port};

/// The account sshd logs the bench in as.
pub(crate) const USER: &str = "sluice-bench";
/// Builds a fresh client command for one target.
type MakeCommand = Box<dyn Fn() -> Command>;

/// scp rounds per target.
const SCP_ROUNDS: usize = 3;
/// The cipher every scp leg is pinned to (`-c`), as the runs did.
const SCP_CIPHER: &str = "aes256-gcm@openssh.com";
/// New connections timed per target (`ssh … true` without multiplexing).
const CONNECT_ROUNDS: usize = 20;
/// Small execs timed per target.
const EXEC_ROUNDS: usize = 200;

pub(crate) fn bench(sluice_bin: Option<&Path>, size_mib: u64) -> Result<()> {
    if !Path::new("/usr/sbin/sshd").exists() {
        bail!("the SSH bench needs OpenSSH's sshd (cargo xtask setup)");
    }
    ensure_user()?;
    let dir = Scratch::new()?;
    let d = dir.0.clone();
    let client_key = keygen(&d.join("client_key"))?;
    let sshd = Sshd::start(&d, "target", &client_key)?;
    let jump = Sshd::start(&d, "jump", &client_key)?;
    let dest = d.join("dest");
    fs::create_dir(&dest)?;
    run(Command::new("chown")
        .arg(format!("{USER}:{USER}"))
        .arg(&dest))?;
    let file = d.join("payload.bin");
    eprintln!("bench: writing a {size_mib} MiB file");
    run(Command::new("head")
        .args(["-c", &format!("{}", size_mib * 1024 * 1024), "/dev/urandom"])
        .stdout(fs::File::create(&file)?))?;
    let known = d.join("known_hosts");
    fs::write(
        &known,
        format!(
            "[127.0.0.1]:{} {}\n[127.0.0.1]:{} {}\n",
            sshd.port, sshd.host_key, jump.port, jump.host_key
        ),
    )?;
    let gateway = match sluice_bin {
        Some(bin) => Some(Gateway::start(bin, &d, &sshd)?),
        None => None,
    };
    // The same cipher on every leg (the gateway's upstream leg prefers it),
    // so the legs differ in their path, not in their cipher's cost.
    let base = |cmd: &mut Command| {
        cmd.args(["-c", SCP_CIPHER])
            .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args(["-o", "BatchMode=no", "-o", "LogLevel=ERROR"]);
    };
    let keyed = |cmd: &mut Command| {
        base(cmd);
        cmd.arg("-i").arg(d.join("client_key")).args([
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "IdentitiesOnly=yes",
        ]);
    };
    // One scp per target: (name, command).
    let mut runs: Vec<(&str, Command)> = Vec::new();
    let target = format!("{USER}@127.0.0.1:{}/", dest.display());
    let mut direct = Command::new("scp");
    keyed(&mut direct);
    direct
        .args(["-P", &sshd.port.to_string()])
        .arg(&file)
        .arg(&target);
    runs.push(("direct", direct));
    if let Some(g) = &gateway {
        let mut via = g.client("scp");
        base(&mut via);
        via.args([
            "-o",
            "PreferredAuthentications=keyboard-interactive,password",
        ])
        .args(["-P", &g.port.to_string()])
        .arg(&file)
        .arg(format!("bench@127.0.0.1:{}/", dest.display()));
        runs.push(("sluice", via));
    }
    let mut jumped = Command::new("scp");
    keyed(&mut jumped);
    jumped
        .arg("-o")
        .arg(format!(
            "ProxyCommand=ssh -c {SCP_CIPHER} -F /dev/null -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -i {} -o IdentitiesOnly=yes -o LogLevel=ERROR -W %h:%p -p {} {USER}@127.0.0.1",
            known.display(),
            d.join("client_key").display(),
            jump.port
        ))
        .args(["-P", &sshd.port.to_string()])
        .arg(&file)
        .arg(&target);
    runs.push(("proxyjump", jumped));
    // Rounds alternate between targets; the median of each is reported.
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    // The client's CPU (scp and the ssh processes it runs), seconds per run.
    let mut client_cpu: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    // The gateway's own CPU over its scp legs (it idles during the others).
    let gateway_cpu = || gateway.as_ref().and_then(|g| super::cpu_seconds(g.pid()));
    let mut gateway_scp = GatewayCpu::default();
    for _ in 0..SCP_ROUNDS {
        for (i, (name, cmd)) in runs.iter_mut().enumerate() {
            crate::interrupt::check()?;
            let _ = fs::remove_file(dest.join("payload.bin"));
            let cpu_before = super::waited_children_cpu_seconds();
            let gateway_before = gateway_cpu();
            let started = Instant::now();
            let out = cmd.stdin(Stdio::null()).output().context("running scp")?;
            let secs = started.elapsed().as_secs_f64();
            let gateway_after = gateway_cpu();
            let cpu = cpu_before
                .zip(super::waited_children_cpu_seconds())
                .map(|(a, b)| b - a);
            if !out.status.success() {
                eprintln!(
                    "bench: scp via {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                continue;
            }
            let copied = fs::metadata(dest.join("payload.bin"))
                .map(|m| m.len())
                .unwrap_or(0);
            if copied != size_mib * 1024 * 1024 {
                eprintln!("bench: scp via {name} copied {copied} bytes");
                continue;
            }
            if *name == "sluice" {
                gateway_scp.add(gateway_before, gateway_after, size_mib as f64);
            }
            rates[i].push(size_mib as f64 / secs);
            client_cpu[i].extend(cpu);
        }
    }
    let median = |mut r: Vec<f64>| super::median(&mut r);
    let results: Vec<(&str, f64, Option<f64>)> = runs
        .iter()
        .zip(rates.into_iter().zip(client_cpu))
        .filter_map(|((name, _), (r, c))| Some((*name, median(r)?, median(c))))
        .collect();
    println!();
    println!(
        "SSH: scp upload of {size_mib} MiB (SFTP protocol, {SCP_CIPHER}), median of {SCP_ROUNDS} rounds"
    );
    let direct = results.iter().find(|r| r.0 == "direct");
    for (name, rate, cpu) in &results {
        let ratio = direct
            .map(|d| format!("{:.2}x direct", rate / d.1))
            .unwrap_or_default();
        let cpu = match (cpu, direct.and_then(|d| d.2)) {
            (Some(c), Some(d)) if d > 0.0 => {
                format!("  client CPU {c:.2} s ({:.2}x direct)", c / d)
            }
            (Some(c), _) => format!("  client CPU {c:.2} s"),
            _ => String::new(),
        };
        println!("  {name:<10} {rate:>8.1} MiB/s  {ratio}{cpu}");
    }
    if let Some(ms) = gateway_scp.per_unit(1e3) {
        println!("  gateway CPU per MiB copied (its logins included): {ms:.2} ms");
    }

    // Small exec round trips over one multiplexed connection per target.
    let mut p50s: Vec<(&str, f64)> = Vec::new();
    let control = |name: &str| d.join(format!("cm-{name}"));
    let mut masters = Masters(Vec::new());
    let mut targets: Vec<(&str, MakeCommand)> = Vec::new();
    {
        let port = sshd.port;
        let ctl = control("direct");
        let d2 = d.clone();
        let known = known.clone();
        targets.push((
            "direct",
            Box::new(move || {
                let mut c = Command::new("ssh");
                c.args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=yes"])
                    .arg("-o")
                    .arg(format!("UserKnownHostsFile={}", known.display()))
                    .arg("-i")
                    .arg(d2.join("client_key"))
                    .args(["-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"])
                    .arg("-S")
                    .arg(&ctl)
                    .args(["-p", &port.to_string()])
                    .arg(format!("{USER}@127.0.0.1"));
                c
            }),
        ));
    }
    if let Some(g) = &gateway {
        let port = g.port;
        let ctl = control("sluice");
        let known = known.clone();
        let askpass = g.askpass.clone();
        targets.push((
            "sluice",
            Box::new(move || {
                let mut c = Command::new("ssh");
                c.env("SSH_ASKPASS", &askpass)
                    .env("SSH_ASKPASS_REQUIRE", "force")
                    .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=yes"])
                    .arg("-o")
                    .arg(format!("UserKnownHostsFile={}", known.display()))
                    .args([
                        "-o",
                        "PreferredAuthentications=keyboard-interactive,password",
                    ])
                    .args(["-o", "LogLevel=ERROR"])
                    .arg("-S")
                    .arg(&ctl)
                    .args(["-p", &port.to_string()])
                    .arg("bench@127.0.0.1");
                c
            }),
        ));
    }
    for (name, make) in &targets {
        let mut master = make();
        master
            .args(["-M", "-N", "-o", "ControlPersist=no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        masters
            .0
            .push(master.spawn().context("starting a control master")?);
        let ctl = control(name);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ctl.exists() {
            crate::interrupt::check()?;
            if Instant::now() > deadline {
                bail!("the {name} control master did not start");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    // Rounds alternate between targets so that load from elsewhere on the
    // machine affects them alike.
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(EXEC_ROUNDS); targets.len()];
    // The gateway's CPU over all rounds (it idles in the direct ones), so
    // the work it does after a client has exited is counted too.
    let mut gateway_exec = GatewayCpu::default();
    let gateway_before = gateway_cpu();
    let mut sluice_execs = 0.0;
    for _ in 0..EXEC_ROUNDS {
        crate::interrupt::check()?;
        for (i, (name, make)) in targets.iter().enumerate() {
            let mut c = make();
            c.arg("true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let t = Instant::now();
            let status = c.status()?;
            if status.success() {
                samples[i].push(t.elapsed().as_secs_f64() * 1e6);
                if *name == "sluice" {
                    sluice_execs += 1.0;
                }
            }
        }
    }
    // Past the last round's closing work.
    thread::sleep(Duration::from_millis(200));
    gateway_exec.add(gateway_before, gateway_cpu(), sluice_execs);
    for ((name, _), mut s) in targets.iter().zip(samples) {
        if s.len() < EXEC_ROUNDS / 2 {
            eprintln!(
                "bench: exec via {name}: only {} of {EXEC_ROUNDS} succeeded",
                s.len()
            );
            continue;
        }
        p50s.extend(super::median(&mut s).map(|p50| (*name, p50)));
    }
    drop(masters);
    println!("SSH: `ssh … true` over one multiplexed connection, {EXEC_ROUNDS} rounds, p50");
    let direct_p50 = p50s.iter().find(|p| p.0 == "direct").map(|p| p.1);
    for (name, p50) in &p50s {
        let added = direct_p50
            .filter(|_| *name != "direct")
            .map(|d| format!("  (+{:.0} µs over direct)", p50 - d))
            .unwrap_or_default();
        println!("  {name:<10} {:>8.0} µs{added}", p50);
    }
    if let Some(us) = gateway_exec.per_unit(1e6) {
        println!("  gateway CPU per exec: {us:.0} µs");
    }
    // A new connection per command: login, upstream connection, exec.
    let mut fresh: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for _ in 0..CONNECT_ROUNDS {
        crate::interrupt::check()?;
        for (i, (_, make)) in targets.iter().enumerate() {
            let mut c = make();
            c.args(["-S", "none", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let t = Instant::now();
            if c.status()?.success() {
                fresh[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    println!("SSH: `ssh … true` on a new connection each time, {CONNECT_ROUNDS} rounds, p50");
    let mut direct_ms = None;
    for ((name, _), mut s) in targets.iter().zip(fresh) {
        let Some(p50) = super::median(&mut s) else {
            eprintln!("bench: new connections via {name} all failed");
            continue;
        };
        if *name == "direct" {
            direct_ms = Some(p50);
        }
        let added = direct_ms
            .filter(|_| *name != "direct")
            .map(|d| format!("  (+{:.1} ms over direct)", p50 - d))
            .unwrap_or_default();
        println!("  {name:<10} {p50:>8.1} ms{added}");
    }
    drop(gateway);
    drop(jump);
    drop(sshd);
    Ok(())
}

/// The gateway's CPU time over the operations it served, read from its
/// stat (whole clock ticks: only totals over many operations mean much).
#[derive(Default)]
struct GatewayCpu {
    seconds: f64,
    units: f64,
}

impl GatewayCpu {
    fn add(&mut self, before: Option<f64>, after: Option<f64>, units: f64) {
        if let (Some(b), Some(a)) = (before, after) {
            self.seconds += a - b;
            self.units += units;
        }
    }

    /// CPU per unit, scaled (`1e6`: µs).
    fn per_unit(&self, scale: f64) -> Option<f64> {
        (self.units > 0.0).then(|| self.seconds / self.units * scale)
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub(crate) fn ensure_user() -> Result<()> {
    let exists = |u: &str| {
        Command::new("id")
            .arg("-u")
            .arg(u)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !exists(USER) {
        let _ = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", USER])
            .output();
        if !exists(USER) {
            bail!("cannot create the bench account {USER} (the SSH bench runs as root)");
        }
    }
    // A new account is locked until it has a password field; `*` allows key logins only.
    run(Command::new("usermod").args(["-p", "*", USER]))?;
    fs::create_dir_all("/run/sshd")?;
    Ok(())
}

pub(crate) fn keygen(path: &Path) -> Result<String> {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "sluice-bench", "-f"])
        .arg(path))?;
    Ok(fs::read_to_string(path.with_extension("pub"))?
        .trim()
        .to_string())
}

/// The ControlMaster clients of the exec rounds, stopped when dropped.
struct Masters(Vec<Child>);

impl Drop for Masters {
    fn drop(&mut self) {
        for m in &mut self.0 {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("sluice-bench-ssh-{}", random_hex(6)?));
        fs::create_dir(&path)?;
        // sshd reads authorized_keys as the bench account.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(crate) struct Sshd {
    child: Child,
    port: u16,
    host_key: String,
}

impl Sshd {
    pub(crate) fn start(dir: &Path, name: &str, client_key: &str) -> Result<Sshd> {
        let host = dir.join(format!("{name}_host_key"));
        let host_key = keygen(&host)?;
        let ak = dir.join(format!("{name}_authorized_keys"));
        fs::write(&ak, format!("{client_key}\n"))?;
        fs::set_permissions(&ak, fs::Permissions::from_mode(0o644))?;
        let port = free_port();
        let config = dir.join(format!("{name}_sshd_config"));
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 AllowUsers {USER}\nSubsystem sftp internal-sftp\nAllowTcpForwarding yes\n\
                 MaxStartups 100\nMaxSessions 100\nLogLevel ERROR\n",
                host.display(),
                dir.join(format!("{name}_sshd.pid")).display(),
                ak.display()
            ),
        )?;
        let child = Command::new("/usr/sbin/sshd")
            .arg("-f")
            .arg(&config)
            .args(["-D", "-e"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join(format!("{name}_sshd.log")))?)
            .spawn()
            .context("starting sshd")?;
        wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10))
            .map_err(|e| anyhow::anyhow!("sshd {name}: {e}"))?;
        Ok(Sshd {
            child,
            port,
            host_key,
        })
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Gateway {
    child: Child,
    pub(crate) port: u16,
    pub(crate) askpass: PathBuf,
    bin: PathBuf,
    config: PathBuf,
}

impl Gateway {
    pub(crate) fn start(bin: &Path, dir: &Path, sshd: &Sshd) -> Result<Gateway> {
        let port = free_port();
        let state = dir.join("gateway-state");
        let config = dir.join("sluice.toml");
        fs::write(
            &config,
            format!(
                "[gateway]\nstate_dir = {:?}\n\n[listen]\nssh = \"127.0.0.1:{port}\"\n\n\
                 [[connections]]\nname = \"bench\"\nkind = \"ssh\"\nupstream = \"127.0.0.1:{}\"\n\
                 user = \"{USER}\"\nprivate_key = {{ file = {:?} }}\nhost_key = \"{}\"\n\
                 allow_groups = [\"bench\"]\n\n\
                 [[rules]]\nname = \"no-rm\"\nmatch = {{ program = [\"rm\"] }}\naction = \"deny\"\n",
                state.display().to_string(),
                sshd.port,
                dir.join("client_key").display().to_string(),
                sshd.host_key
            ),
        )?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("SLUICE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("gateway.log"))?)
            .spawn()
            .context("starting sluice serve")?;
        wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(30))
            .map_err(|e| anyhow::anyhow!("sluice: {e}"))?;
        let out = Command::new(bin)
            .args(["token", "issue", "--config"])
            .arg(&config)
            .args(["--subject", "bench", "--groups", "bench", "--ttl", "1h"])
            .output()?;
        if !out.status.success() {
            bail!(
                "sluice token issue: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let token = dir.join("token");
        fs::write(&token, String::from_utf8_lossy(&out.stdout).trim())?;
        let askpass = dir.join("askpass");
        fs::write(&askpass, format!("#!/bin/sh\ncat '{}'\n", token.display()))?;
        fs::set_permissions(&askpass, fs::Permissions::from_mode(0o700))?;
        // The gateway's host key, generated at start, pinned like any host.
        let pubkey = Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(state.join("keys").join("ssh_host_ed25519_key"))
            .output()?;
        let known = dir.join("known_hosts");
        let mut text = fs::read_to_string(&known).unwrap_or_default();
        text.push_str(&format!(
            "[127.0.0.1]:{port} {}\n",
            String::from_utf8_lossy(&pubkey.stdout).trim()
        ));
        fs::write(&known, text)?;
        eprintln!("bench: Sluice SSH listening on 127.0.0.1:{port}");
        Ok(Gateway {
            child,
            port,
            askpass,
            bin: bin.to_path_buf(),
            config,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs a `sluice` subcommand against this gateway's config.
    pub(crate) fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(&self.bin)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()?)
    }

    pub(crate) fn client(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SSH_ASKPASS", &self.askpass)
            .env("SSH_ASKPASS_REQUIRE", "force");
        c
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
