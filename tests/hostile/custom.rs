//! Hostile rows that need host-side fixtures: canary secrets, listeners on the host, a victim job in
//! the other slot, host processes to signal, concurrent jobs.

use std::io::ErrorKind;
use std::net::{TcpListener, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use corral_sandbox::{FileIn, Limits, Outcome, Spec, Status};

use super::{probe_argv, probe_problems, Ran};
use crate::common::{self, Shared};

fn ran(result: Result<Outcome, corral_sandbox::Error>, problems: Vec<String>) -> Ran {
    Ran { result, problems }
}

fn all_output(o: &Outcome) -> String {
    format!("{}{}", common::text(&o.stdout), common::text(&o.stderr))
}

/// A value no job can guess.
fn secret(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("corral-canary-{tag}-{}-{nanos}", std::process::id())
}

fn sh(spec: &mut Spec, script: &str) {
    spec.argv = vec!["sh".into(), "-c".into(), script.into()];
}

/// Run `f` while a victim job (in the other slot) sits after printing `ready`; the victim's stdin
/// is closed afterwards and it must end `ok`.
fn beside<T>(shared: &Shared, victim_script: &str, f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let (writer, stdin) = corral_sandbox::stdin_pipe().expect("stdin pipe");
    let mut victim = shared.spec(&["sh", "-c", victim_script], Limits::default());
    victim.limits.wall_time = Duration::from_secs(60);
    victim.stdin = stdin;
    let (tx, rx) = mpsc::channel();
    let mut problems = Vec::new();
    let value = std::thread::scope(|scope| {
        let handle = scope.spawn(move || {
            let mut told = false;
            shared.sandbox.run(victim, &mut |_, chunk| {
                if !told && chunk.starts_with(b"ready") {
                    told = true;
                    let _ = tx.send(());
                }
            })
        });
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            problems.push("the victim job did not start".to_string());
        }
        let value = f();
        drop(writer);
        match handle.join().expect("victim thread") {
            Ok(o) if o.status == Status::Ok && o.stdout.ends_with(b"survived\n") => {}
            Ok(o) => problems.push(format!(
                "the victim job was disturbed: {:?} {:?} {:?}",
                o.status,
                common::text(&o.stdout),
                common::text(&o.stderr)
            )),
            Err(e) => problems.push(format!("the victim job failed: {e}")),
        }
        value
    });
    (value, problems)
}

/// Row 2b: `cat` blocked on a stdin whose write end the test keeps open.
pub fn stdin_held(shared: &Shared, mut spec: Spec) -> Ran {
    let (writer, stdin) = corral_sandbox::stdin_pipe().expect("stdin pipe");
    spec.argv = vec!["cat".into()];
    spec.stdin = stdin;
    let result = shared.sandbox.run(spec, &mut |_, _| {});
    drop(writer);
    ran(result, vec![])
}

/// Row 9: kill(-1) and every pid, with host processes (root and nobody) and a job in the other
/// slot as potential victims.
pub fn kill_everything(shared: &Shared, mut spec: Spec) -> Ran {
    spec.argv = vec!["./jobs".into(), "killall".into()];
    let mut host = vec![
        Command::new("sleep").arg("60").spawn().expect("host sleep"),
        Command::new("sleep")
            .arg("60")
            .uid(65534)
            .gid(65534)
            .spawn()
            .expect("host sleep as nobody"),
    ];
    let (result, mut problems) =
        beside(shared, "echo ready; cat >/dev/null; echo survived", || {
            shared.sandbox.run(spec, &mut |_, _| {})
        });
    for child in &mut host {
        if !matches!(child.try_wait(), Ok(None)) {
            problems.push(format!("host process {} was killed by the job", child.id()));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    ran(result, problems)
}

/// Canary files with `value` in /root, /etc and the sandbox's state directory; removed on drop.
struct Canaries(Vec<PathBuf>);

impl Canaries {
    fn plant(shared: &Shared, value: &str, ext: &str) -> Canaries {
        let pid = std::process::id();
        let paths = vec![
            PathBuf::from(format!("/root/corral-canary-{pid}{ext}")),
            PathBuf::from(format!("/etc/corral-canary-{pid}{ext}")),
            shared.state.path().join(format!("canary{ext}")),
        ];
        for p in &paths {
            std::fs::write(p, value).expect("planting a canary");
        }
        Canaries(paths)
    }
}

impl Drop for Canaries {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Password hashes of the host's /etc/shadow (nothing of it may show up in a job's output).
fn shadow_hashes() -> Vec<String> {
    std::fs::read_to_string("/etc/shadow")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .filter(|h| h.len() > 2)
        .map(str::to_string)
        .collect()
}

fn leaks(o: &Outcome, secret: &str) -> Vec<String> {
    let out = all_output(o);
    let mut problems = Vec::new();
    if out.contains(secret) {
        problems.push("a host secret appeared in the job's output".to_string());
    }
    if shadow_hashes().iter().any(|h| out.contains(h.as_str())) {
        problems.push("a password hash of the host's /etc/shadow appeared in the output".into());
    }
    problems
}

/// Row 21a: read the host's secrets from every place a job might try.
pub fn secrets(shared: &Shared, mut spec: Spec) -> Ran {
    let value = secret("file");
    let canaries = Canaries::plant(shared, &value, "");
    let state = shared.state.path().display();
    sh(
        &mut spec,
        &format!(
            "cat /etc/shadow /etc/gshadow /root/* /root/.* /etc/corral-canary-* {state}/canary \
             /proc/1/environ /proc/*/environ /run/corral/* 2>&1; ls -la / /root /etc /run /var {state} 2>&1; \
             grep -rs corral-canary /etc /root /box /tmp /run /var /home 2>&1; true"
        ),
    );
    let result = shared.sandbox.run(spec, &mut |_, _| {});
    drop(canaries);
    let problems = result
        .as_ref()
        .map(|o| leaks(o, &value))
        .unwrap_or_default();
    ran(result, problems)
}

/// Variables a job may see: the image's.
const ALLOWED_ENV: &[&str] = &["PATH", "LANG", "HOME", "TMPDIR"];

fn env_problems(text: &str, value: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("");
        if !ALLOWED_ENV.contains(&key) {
            problems.push(format!("variable outside the allowlist: {line:?}"));
        }
    }
    if text.contains(value) {
        problems.push("the host's secret variable reached the job".into());
    }
    problems
}

/// Row 21b: the job's environment, through the library and through `corral sandbox run` started
/// with a secret in its own environment.
pub fn environment(shared: &Shared, mut spec: Spec) -> Ran {
    let value = secret("env");
    spec.argv = vec!["/usr/bin/env".into()];
    let result = shared.sandbox.run(spec, &mut |_, _| {});
    let mut problems = match &result {
        Ok(o) => env_problems(&common::text(&o.stdout), &value),
        Err(_) => vec![],
    };
    let cli = common::cli::run(&["/usr/bin/env"], &[("CORRAL_TEST_SECRET", value.as_str())]);
    match cli.json() {
        Ok(json) => {
            let stdout = json["stdout"].as_str().unwrap_or("");
            problems.extend(env_problems(stdout, &value));
            if json["status"] != "ok" {
                problems.push(format!("the CLI job ended {}", json["status"]));
            }
        }
        Err(e) => problems.push(e),
    }
    ran(result, problems)
}

/// Row 22: another job's files, through /proc/*/root, `..`, the host's state directory.
pub fn other_jobs(shared: &Shared, mut spec: Spec) -> Ran {
    let value = secret("victim");
    let victim = format!(
        "echo {value} > /box/victim-secret; echo {value} > /tmp/victim-secret; \
         echo {value} > /dev/shm/victim-secret; echo ready; cat >/dev/null; echo survived"
    );
    let state = shared.state.path().display();
    spec.files.clear();
    sh(
        &mut spec,
        &format!(
            "ls -d /proc/*/root 2>&1; cat /proc/*/root/box/victim* /proc/*/root/tmp/victim* /proc/*/cwd/victim* 2>&1; \
             cat ../../box/victim-secret ../../../tmp/victim-secret /box/victim-secret /tmp/victim-secret \
             /dev/shm/victim-secret 2>&1; find / -xdev -name 'victim-secret*' 2>&1; \
             ls -R {state} 2>&1 | head -50; cat {state}/slots/*/upper/box/* {state}/slots/*/root/box/* 2>&1; \
             ls /proc 2>&1; true"
        ),
    );
    let (result, mut problems) =
        beside(shared, &victim, || shared.sandbox.run(spec, &mut |_, _| {}));
    if let Ok(o) = &result {
        if all_output(o).contains(&value) {
            problems.push("the job read another job's file".into());
        }
    }
    ran(result, problems)
}

/// Row 24: files the service reads back, replaced by every kind of trap.
pub fn read_back(shared: &Shared, mut spec: Spec) -> Ran {
    sh(
        &mut spec,
        "echo good > good; ln -s /etc/shadow link; ln -s /proc/1/root magic; echo a > a; ln a hard; \
         ln /etc/passwd hard2 2>/dev/null || ln a hard2; mkfifo fifo; \
         mknod dev c 1 5 2>/dev/null || ln -s /dev/zero dev; truncate -s 1T sparse; stat -c 'sparse %s' sparse; \
         head -c 2000000 /dev/zero > big; mkdir dir; true",
    );
    let expected: &[(&str, &str)] = &[
        ("link", "symbolic link"),
        ("magic", "symbolic link"),
        ("hard", "more than one link"),
        ("hard2", "more than one link"),
        ("fifo", "not a regular file"),
        ("dev", ""),
        ("sparse", "larger than the cap"),
        ("big", "larger than the cap"),
        ("dir", "not a regular file"),
        ("missing", "not found"),
    ];
    spec.collect = std::iter::once("good")
        .chain(expected.iter().map(|(n, _)| *n))
        .map(str::to_string)
        .collect();
    spec.collect_max_bytes = 1 << 20;
    let result = shared.sandbox.run(spec, &mut |_, _| {});
    let mut problems = Vec::new();
    if let Ok(o) = &result {
        if !common::text(&o.stdout).contains("sparse 1099511627776") {
            problems.push("the job could not create its 1 TiB sparse file".into());
        }
        if o.wall_time > Duration::from_secs(5) {
            problems.push(format!("reading back took {:?}", o.wall_time));
        }
        let file = |name: &str| o.files.iter().find(|f| f.name == name);
        match file("good") {
            Some(f) if f.contents.as_deref() == Ok(b"good\n".as_slice()) => {}
            other => problems.push(format!("good file not read back: {other:?}")),
        }
        for (name, why) in expected {
            match file(name).map(|f| &f.contents) {
                Some(Err(e)) if e.contains(why) => {}
                other => problems.push(format!(
                    "{name}: expected a refusal containing {why:?}, got {:?}",
                    other.map(|c| c.as_ref().map(|b| b.len()))
                )),
            }
        }
    }
    ran(result, problems)
}

/// Row 25: input file names that would escape the working directory are refused.
pub fn bad_names(shared: &Shared, spec: Spec) -> Ran {
    let long = "x".repeat(256);
    let names = [
        "../evil",
        "../../etc/corral-evil",
        "/etc/corral-evil",
        "/tmp/corral-evil",
        "a/b",
        "..",
        ".",
        "",
        "x\0y",
        "x\ny",
        long.as_str(),
    ];
    let mut problems = Vec::new();
    let mut last = None;
    let base_files = spec.files.clone();
    for name in names.iter().map(|n| vec![*n]).chain([vec!["same", "same"]]) {
        let mut s = shared.spec(&["true"], spec.limits);
        s.files = base_files.clone();
        s.files.extend(name.iter().map(|n| FileIn {
            name: n.to_string(),
            contents: b"evil".to_vec(),
            mode: 0o644,
        }));
        match shared.sandbox.run(s, &mut |_, _| {}) {
            Err(corral_sandbox::Error::InvalidSpec(msg)) => last = Some(msg),
            other => problems.push(format!("file name {name:?} was not refused: {other:?}")),
        }
    }
    for path in ["/etc/corral-evil", "/tmp/corral-evil"] {
        if std::path::Path::new(path).exists() {
            problems.push(format!("{path} exists on the host"));
        }
    }
    let result = Err(corral_sandbox::Error::InvalidSpec(last.unwrap_or_default()));
    ran(result, problems)
}

/// Row 29: nothing ran with privilege.
pub fn no_privilege(shared: &Shared, o: &Outcome) -> Result<(), String> {
    let out = all_output(o);
    let bad = ["euid 0\n", "uid=0(", "effective UID is 0"];
    if let Some(b) = bad.iter().find(|b| out.contains(*b)) {
        return Err(format!("privilege gained: {b:?} in {out}"));
    }
    let uids: Vec<u32> = shared.sandbox.idle_slots().iter().map(|s| s.uid).collect();
    let euid = out
        .lines()
        .find_map(|l| l.strip_prefix("euid "))
        .and_then(|u| u.parse::<u32>().ok());
    if !euid.is_some_and(|u| uids.contains(&u)) {
        return Err(format!(
            "the re-executed setuid file reported euid {euid:?}"
        ));
    }
    let mut caps = 0;
    for line in out.lines().filter(|l| l.starts_with("Cap")) {
        caps += 1;
        if !line.ends_with("0000000000000000") {
            return Err(format!("capabilities left: {line}"));
        }
    }
    let nnp = out
        .lines()
        .filter(|l| l.starts_with("NoNewPrivs:"))
        .all(|l| l.ends_with('1'));
    if caps < 10 || !nnp {
        return Err(format!(
            "capability sets or no_new_privs not as expected:\n{out}"
        ));
    }
    Ok(())
}

/// Row 41: nothing in mountinfo, cgroup or uname names a host path or the host.
pub fn no_host_paths(shared: &Shared, o: &Outcome) -> Result<(), String> {
    let out = common::text(&o.stdout);
    let state = shared.state.path().display().to_string();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let mut needles = vec![
        state.as_str(),
        "/work/",
        "/run/corral",
        "corral-test",
        "/sys/fs/cgroup",
        "slots/",
    ];
    if host.len() >= 3 && host != "corral" {
        needles.push(host);
    }
    if let Some(n) = needles.iter().find(|n| out.contains(**n)) {
        return Err(format!("host detail {n:?} visible in:\n{out}"));
    }
    if !out.lines().any(|l| l == "corral") {
        return Err("hostname is not the container's".into());
    }
    Ok(())
}

/// Row 37: TCP and DNS towards the host and internal addresses.
pub fn network(shared: &Shared, mut spec: Spec) -> Ran {
    let loopback = TcpListener::bind("127.0.0.1:0").expect("loopback listener");
    let any = TcpListener::bind("0.0.0.0:0").expect("listener");
    let v6 = TcpListener::bind("[::1]:0").ok();
    let mut listeners = vec![&loopback, &any];
    let mut names = vec![
        format!("tcp=127.0.0.1:{}", loopback.local_addr().unwrap().port()),
        format!("tcp=127.0.0.1:{}", any.local_addr().unwrap().port()),
        "tcp=10.0.0.1:80".into(),
        "tcp=172.17.0.1:80".into(),
        "tcp=192.168.0.1:80".into(),
        "tcp=169.254.169.254:80".into(),
        "tcp=100.100.100.200:80".into(),
        "dns=8.8.8.8".into(),
        "dns=127.0.0.53".into(),
        "dns=127.0.0.1".into(),
    ];
    if let Some(l) = &v6 {
        names.push(format!("tcp=[::1]:{}", l.local_addr().unwrap().port()));
        listeners.push(l);
    }
    // The host's own address (no packet is sent by connecting a UDP socket).
    let host_ip = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("8.8.8.8:53").and_then(|()| s.local_addr()));
    if let Ok(addr) = host_ip {
        names.push(format!(
            "tcp={}:{}",
            addr.ip(),
            any.local_addr().unwrap().port()
        ));
    }
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    names.extend(
        resolv
            .lines()
            .filter_map(|l| l.strip_prefix("nameserver "))
            .filter(|ip| ip.trim().parse::<std::net::Ipv4Addr>().is_ok())
            .map(|ip| format!("dns={}", ip.trim())),
    );
    spec.argv = probe_argv(&names);
    spec.limits.wall_time = Duration::from_secs(60);
    let result = shared.sandbox.run(spec, &mut |_, _| {});
    let mut problems = result
        .as_ref()
        .map(|o| probe_problems(o, &names))
        .unwrap_or_default();
    for l in listeners {
        l.set_nonblocking(true).unwrap();
        match l.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => problems.push(format!("a host listener was reached: {other:?}")),
        }
    }
    ran(result, problems)
}

/// Row 38: socket families other than unix/inet/inet6, and a host abstract unix socket.
pub fn sockets(shared: &Shared, mut spec: Spec) -> Ran {
    let name = format!("corral-test-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let listener = UnixListener::bind_addr(&addr).expect("abstract listener");
    let names: Vec<String> = [
        "socket_packet",
        "socket_packet_dgram",
        "socket_netlink_route",
        "socket_netlink_generic",
        "socket_netlink_audit",
        "socket_vsock",
        "socket_vsock_dgram",
        "socket_raw_inet",
        "socket_raw_inet6",
        "socket_ping",
        "socket_alg",
        "socket_key",
        "socket_xdp",
        "socket_tipc",
        "socket_bluetooth",
        "socket_can",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("unix_abstract={name}")])
    .collect();
    spec.argv = probe_argv(&names);
    // Allowed families must still work: the probe proves the filter is not a blanket denial.
    spec.argv
        .extend(["socket_unix".to_string(), "socket_inet".to_string()]);
    let result = shared.sandbox.run(spec, &mut |_, _| {});
    let mut problems = result
        .as_ref()
        .map(|o| probe_problems(o, &names))
        .unwrap_or_default();
    if let Ok(o) = &result {
        let out = common::text(&o.stdout);
        for allowed in ["socket_unix ok", "socket_inet ok"] {
            if !out.lines().any(|l| l == allowed) {
                problems.push(format!("{allowed:?} missing: allowed families are denied"));
            }
        }
    }
    listener.set_nonblocking(true).unwrap();
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => problems.push(format!("the host's abstract socket was reached: {other:?}")),
    }
    ran(result, problems)
}

/// Row 39a: a compiler told to include host secrets, run inside the sandbox.
pub fn compiler_includes(shared: &Shared, mut spec: Spec) -> Ran {
    let value = secret("compiler");
    let canaries = Canaries::plant(shared, &format!("int leak = \"{value}\";\n"), ".h");
    let pid = std::process::id();
    let state = shared.state.path().display();
    let sources = [
        "#include \"/etc/shadow\"\n".to_string(),
        format!("#include \"/root/corral-canary-{pid}.h\"\n"),
        format!("#include \"/etc/corral-canary-{pid}.h\"\n"),
        format!("#include \"{state}/canary.h\"\n"),
        "__asm__(\".incbin \\\"/etc/shadow\\\"\");\n".to_string(),
        format!("__asm__(\".incbin \\\"/root/corral-canary-{pid}.h\\\"\");\n"),
        "__asm__(\".incbin \\\"/etc/passwd\\\"\");\nint main(void) { return 0; }\n".to_string(),
    ];
    for (i, src) in sources.iter().enumerate() {
        spec.files.push(FileIn {
            name: format!("evil{i}.c"),
            contents: src.clone().into_bytes(),
            mode: 0o644,
        });
    }
    sh(
        &mut spec,
        "st=0; for f in evil*.c; do gcc -c \"$f\" -o /tmp/x.o || st=1; strings /tmp/x.o 2>/dev/null; rm -f /tmp/x.o; done; exit $st",
    );
    let result = shared.sandbox.run(spec, &mut |_, _| {});
    drop(canaries);
    let mut problems = result
        .as_ref()
        .map(|o| leaks(o, &value))
        .unwrap_or_default();
    if let Ok(o) = &result {
        if !common::text(&o.stderr).contains("evil0.c") {
            problems.push("gcc did not run (no diagnostics for evil0.c)".into());
        }
    }
    ran(result, problems)
}

/// Row 42: more jobs than slots, each at its process and memory limits, while the host forks.
pub fn concurrent(shared: &Shared, spec: Spec) -> Ran {
    let limits = spec.limits;
    let files = spec.files;
    let jobs = 2 * shared.sandbox.slots();
    let mut problems = Vec::new();
    let cgroups: Vec<std::path::PathBuf> = shared
        .sandbox
        .idle_slots()
        .into_iter()
        .flat_map(|s| s.cgroup_dirs)
        .collect();
    let (results, host_forks) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|_| {
                let mut s = shared.spec(&["./jobs", "bombhog"], limits);
                s.files = files.clone();
                scope.spawn(move || shared.sandbox.run(s, &mut |_, _| {}))
            })
            .collect();
        let mut forks = 0;
        while !handles.iter().all(|h| h.is_finished()) {
            // Once every slot runs one of these jobs (limits are set per job).
            if forks >= 5 {
                problems.extend(slots_fit_the_host(&cgroups));
            }
            match Command::new("true").status() {
                Ok(s) if s.success() => forks += 1,
                other => problems.push(format!(
                    "the host could not fork during the jobs: {other:?}"
                )),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("job thread"))
            .collect();
        (results, forks)
    });
    if host_forks == 0 {
        problems.push("the host never forked while the jobs ran".into());
    }
    let mut first = None;
    for result in results {
        match &result {
            Ok(o) => {
                if ![Status::RuntimeError, Status::TimeLimit, Status::MemoryLimit]
                    .contains(&o.status)
                {
                    problems.push(format!("a concurrent job ended {:?}", o.status));
                }
                if o.memory_peak_bytes > limits.memory_bytes {
                    problems.push(format!("a job peaked at {} bytes", o.memory_peak_bytes));
                }
            }
            Err(e) => problems.push(format!("a concurrent job failed: {e}")),
        }
        first.get_or_insert(result);
    }
    ran(first.expect("at least one job"), problems)
}

/// Rows 1, 3, 4: while the row's job runs, the host still forks and a job in the other slot
/// forks 20 children and finishes promptly.
pub fn beside_neighbour(shared: &Shared, spec: Spec) -> Ran {
    std::thread::scope(|scope| {
        let main = scope.spawn(|| shared.sandbox.run(spec, &mut |_, _| {}));
        std::thread::sleep(Duration::from_millis(300));
        let mut problems = Vec::new();
        if main.is_finished() {
            problems.push("the row's job ended before its neighbour started".into());
        }
        match Command::new("true").status() {
            Ok(s) if s.success() => {}
            other => problems.push(format!("the host could not fork: {other:?}")),
        }
        let script = "i=0; while [ $i -lt 20 ]; do sleep 0 & i=$((i+1)); done; wait; echo forked";
        let n = shared.run(shared.spec(&["sh", "-c", script], Limits::default()));
        if n.status != Status::Ok || n.stdout != b"forked\n" || n.wall_time > Duration::from_secs(5)
        {
            problems.push(format!(
                "the neighbour job suffered: {:?} {:?} {:?} wall {:?}",
                n.status,
                common::text(&n.stdout),
                common::text(&n.stderr),
                n.wall_time
            ));
        }
        let result = main.join().expect("row job thread");
        ran(result, problems)
    })
}

/// Row 24b: a daemon keeps swapping the collected file between a symlink and a regular file while
/// the job exits; the read-back gets the regular file or a refusal, never the link's target.
pub fn read_back_race(shared: &Shared, mut spec: Spec) -> Ran {
    sh(
        &mut spec,
        "setsid sh -c 'trap \"\" HUP TERM; while :; do ln -sf /etc/passwd t1; mv -f t1 out; \
         echo regular > t2; mv -f t2 out; done' </dev/null >/dev/null 2>&1 & sleep 0.3; exit 0",
    );
    spec.collect = vec!["out".into()];
    let result = shared.sandbox.run(spec, &mut |_, _| {});
    let mut problems = Vec::new();
    if let Ok(o) = &result {
        match o.files.first().map(|f| &f.contents) {
            Some(Ok(c)) if c.as_slice() == b"regular\n" => {}
            Some(Err(e)) if e.contains("symbolic link") || e.contains("not found") => {}
            other => problems.push(format!("read back {other:?}")),
        }
    }
    ran(result, problems)
}

fn read_number(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The slots' process and memory limits together stay well within the host's pid_max and RAM.
fn slots_fit_the_host(cgroups: &[std::path::PathBuf]) -> Vec<String> {
    let pid_max = read_number("/proc/sys/kernel/pid_max".as_ref()).unwrap_or(32768);
    let ram = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(u64::MAX, |kb| kb * 1024);
    let sum = |file: &str| -> u64 {
        cgroups
            .iter()
            .filter_map(|d| read_number(&d.join(file)))
            .fold(0u64, u64::saturating_add)
    };
    let (pids, memory) = (sum("pids.max"), sum("memory.limit_in_bytes"));
    let mut problems = Vec::new();
    if pids == 0 || pids * 2 > pid_max {
        problems.push(format!(
            "slots may hold {pids} processes with pid_max {pid_max}"
        ));
    }
    if memory == 0 || memory > ram {
        problems.push(format!("slots may use {memory} bytes of {ram}"));
    }
    problems
}
