//! Images: size of each stored image, and job start-to-exit latency on a built image against the
//! host image, interleaved in one run: `/bin/true` over the image's EROFS lowers, over directory
//! copies of the same layers, and on the host image; then a language's hello world on its image
//! against the host. Each twice: with the job's root built per job (the per-job overlay mount on
//! the critical path) and with it prepared ahead, as consecutive jobs of a language find it in the
//! service.
//!
//! `corral image build python` first, then
//! `cargo run --release -p corral-bench --bin images -- --data-dir ./corral-data --image python`

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context};
use clap::Parser;
use corral_bench::{interleave, table};
use corral_images::store::Store;
use corral_sandbox::{Image, Sandbox, SandboxConfig, Spec, Status};

#[derive(Parser)]
struct Args {
    /// Data directory holding the image store.
    #[arg(long, default_value = "./corral-data")]
    data_dir: PathBuf,
    /// Image to measure.
    #[arg(long, default_value = "python")]
    image: String,
    /// Hello world command on that image and on the host.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, default_values = ["python3", "-c", "print('hello, world')"])]
    hello: Vec<String>,
    /// Measured rounds per variant.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Unmeasured warm-up rounds.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
}

fn main() -> anyhow::Result<()> {
    corral_sandbox::run_helper_if_requested();
    let args = Args::parse();
    let store = Store::open(&args.data_dir)?;
    println!("{}", sizes(&store)?);
    let resolved = store.resolve(&args.image)?;
    let image = Image {
        name: args.image.clone(),
        layers: resolved.layers.clone(),
        host_binds: Vec::new(),
        env: resolved.env.clone(),
    };
    let copies = tempfile_dir()?;
    let dir_image = Image {
        layers: copy_layers(&resolved.layers, &copies)?,
        ..image.clone()
    };
    // Two sandboxes. `cold` has one slot, so consecutive jobs (on different images) never find
    // their root prepared: each pays building its root. `warm` has a slot per variant; slots are
    // taken in turn, so each variant keeps its own slot and finds its root prepared, as
    // consecutive jobs of one language do in the service.
    let cold = sandbox("cold", 1, 3_100_000)?;
    let warm = sandbox("warm", 3, 3_200_000)?;
    let result = (|| -> anyhow::Result<()> {
        let true_argv = vec!["/bin/true".to_string()];
        for (sandbox, how) in [
            (&cold, "root built per job"),
            (&warm, "root prepared ahead"),
        ] {
            let host = sandbox.host_image();
            let mut on_host = || run(sandbox, &host, &true_argv);
            let mut on_erofs = || run(sandbox, &image, &true_argv);
            let mut on_dirs = || run(sandbox, &dir_image, &true_argv);
            let samples = interleave(
                &mut [
                    ("host image", &mut on_host),
                    ("image, EROFS lowers", &mut on_erofs),
                    ("image, directory lowers", &mut on_dirs),
                ],
                args.warmup,
                args.rounds,
            )?;
            let title = format!(
                "/bin/true, {how}: overlay over `{}` ({} layers)",
                args.image,
                image.layers.len()
            );
            println!("{}", table(&title, &samples));
        }
        for (sandbox, how) in [
            (&cold, "root built per job"),
            (&warm, "root prepared ahead"),
        ] {
            let host = sandbox.host_image();
            let mut on_host = || run(sandbox, &host, &args.hello);
            let mut on_image = || run(sandbox, &image, &args.hello);
            let samples = interleave(
                &mut [
                    ("host image", &mut on_host),
                    ("built image (EROFS)", &mut on_image),
                ],
                args.warmup,
                args.rounds,
            )?;
            let title = format!("hello world, {how}: `{}`", args.hello.join(" "));
            println!("{}", table(&title, &samples));
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&copies);
    for sandbox in [cold, warm] {
        let state = sandbox.config().state_dir.clone();
        drop(sandbox);
        let _ = std::fs::remove_dir_all(&state);
    }
    result
}

fn run(sandbox: &Sandbox, image: &Image, argv: &[String]) -> anyhow::Result<()> {
    let spec = Spec {
        image: image.clone(),
        argv: argv.to_vec(),
        ..Spec::default()
    };
    let outcome = sandbox.run(spec, &mut |_, _| {})?;
    ensure!(
        outcome.status == Status::Ok && outcome.exit_code == Some(0),
        "{argv:?} on {}: {outcome:?}",
        image.name
    );
    Ok(())
}

/// A sandbox of `slots` slots with its own state directory, cgroup parent and uids.
fn sandbox(name: &str, slots: usize, uid_base: u32) -> anyhow::Result<Sandbox> {
    let mut config = SandboxConfig::host_defaults()?;
    config.slots = slots;
    let id = format!("corral-bench-images-{name}-{}", std::process::id());
    config.state_dir = std::env::temp_dir().join(&id);
    config.cgroup_parent = id;
    config.uid_base = uid_base;
    Sandbox::new(config).context("starting the sandbox (run as root)")
}

fn sizes(store: &Store) -> anyhow::Result<String> {
    let mut out = String::from("### Stored images\n\n| image | format | layer size MiB | whole image MiB | layers |\n|---|---|---|---|---|\n");
    for (name, m) in store.list()? {
        let chain = store.chain(&m)?;
        let total: u64 = chain.iter().map(|l| l.size).sum();
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        out.push_str(&format!(
            "| {name} | {:?} | {:.1} | {:.1} | {} |\n",
            m.format,
            mib(m.size),
            mib(total),
            chain.len()
        ));
    }
    Ok(out)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("corral-bench-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Plain directory copies of the layers (cp -a keeps owners, modes, xattrs and whiteouts).
fn copy_layers(layers: &[PathBuf], into: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let dest = into.join(format!("l{i}"));
        let status = Command::new("cp")
            .arg("-a")
            .arg(layer)
            .arg(&dest)
            .status()?;
        ensure!(status.success(), "cp -a {} failed", layer.display());
        out.push(dest);
    }
    Ok(out)
}
