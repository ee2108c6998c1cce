//! `corral image ...`: build, list, remove, import and export images in the data directory's
//! image store.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use corral_images::layer::LayerFormat;
use corral_images::recipe::RecipeBook;
use corral_images::store::Store;

/// Default data directory, shared by `corral image`, `corral sandbox run` and `corral serve`.
pub const DEFAULT_DATA_DIR: &str = "./corral-data";

/// `corral image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image from its recipe (and any parent that is missing or out of date).
    Build(BuildArgs),
    /// List images: name, digest, size, parent, packages.
    Ls(LsArgs),
    /// Remove an image by name, or every name of a digest (refused while another image stacks on it).
    Rm(RmArgs),
    /// Import an OCI image layout or `docker save` tarball (optionally gzipped).
    Import(ImportArgs),
    /// Write an image (all its layers) as an OCI image layout tarball.
    Export(ExportArgs),
    /// Pin every stored image's name to its digest in a lock file (default images/images.lock).
    Lock(LockArgs),
}

/// Options every image command takes.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Data directory holding the image store (shared with `corral serve` and `corral sandbox run`).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Format of new layers: EROFS files when the node supports them (default), or directories.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub layer_format: Format,
}

/// Layer format choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// EROFS if available, else directories.
    Auto,
    /// EROFS files.
    Erofs,
    /// Plain directories.
    Dir,
}

impl StoreArgs {
    /// Open the store these options name.
    pub fn open(&self) -> anyhow::Result<Store> {
        let store = match self.layer_format {
            Format::Auto => Store::open(&self.data_dir),
            Format::Erofs => Store::open_with_format(&self.data_dir, LayerFormat::Erofs),
            Format::Dir => Store::open_with_format(&self.data_dir, LayerFormat::Dir),
        };
        store.with_context(|| format!("opening the image store in {}", self.data_dir.display()))
    }
}

/// Options of `corral image build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Recipe name (python, gcc, java, javascript, ruby, go, rust, haskell, bash, base).
    pub name: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Directory of extra `<name>.toml` recipes, overriding the built-in ones.
    #[arg(long)]
    pub recipes: Option<PathBuf>,
    /// Rebuild even if the store has an image built from the same recipe.
    #[arg(long)]
    pub force: bool,
}

/// Options of `corral image ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print the manifests as a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Options of `corral image rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Image name or digest.
    pub name: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Options of `corral image import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The tarball.
    pub file: PathBuf,
    /// Name to register (default: the tag recorded in the tarball).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Options of `corral image export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Image name or digest.
    pub name: String,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Options of `corral image lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// Lock file to write.
    #[arg(short, long, default_value = "images/images.lock")]
    pub output: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Run an image subcommand.
pub fn run(cmd: ImageCommand) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Build(a) => build(a),
        ImageCommand::Ls(a) => ls(a),
        ImageCommand::Rm(a) => {
            let removed = a.store.open()?.remove(&a.name)?;
            println!("removed {}", removed.join(", "));
            Ok(0)
        }
        ImageCommand::Import(a) => import(a),
        ImageCommand::Export(a) => export(a),
        ImageCommand::Lock(a) => {
            let lock = corral_images::lock::Lock::from_store(&a.store.open()?)?;
            std::fs::write(&a.output, lock.to_toml()?)
                .with_context(|| format!("writing {}", a.output.display()))?;
            println!(
                "pinned {} image(s) in {}",
                lock.images.len(),
                a.output.display()
            );
            Ok(0)
        }
    }
}

fn build(a: BuildArgs) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let book = RecipeBook::load(a.recipes.as_deref())?;
    let start = Instant::now();
    let mut on_step = |step: &str| eprintln!("[{:7.1}s] {step}", start.elapsed().as_secs_f64());
    let mut builder = corral_images::build::Builder {
        store: &store,
        book: &book,
        on_step: &mut on_step,
        force: a.force,
    };
    let built = builder
        .build(&a.name)
        .with_context(|| format!("building image {}", a.name))?;
    let m = &built.manifest;
    eprintln!("[{:7.1}s] done", start.elapsed().as_secs_f64());
    println!("{} {} {}", a.name, m.digest, human(m.size));
    Ok(0)
}

fn ls(a: LsArgs) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let images = store.list()?;
    if a.json {
        let list: Vec<_> = images
            .iter()
            .map(|(n, m)| serde_json::json!({"name": n, "manifest": m}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    println!(
        "{:<20} {:<20} {:>9} {:<7} {:<14} PACKAGES",
        "NAME", "DIGEST", "SIZE", "FORMAT", "PARENT"
    );
    for (name, m) in images {
        let parent = m
            .parent
            .as_ref()
            .map(|p| short(&p.to_string()))
            .unwrap_or_else(|| "-".into());
        let pkgs: Vec<String> = m
            .packages
            .iter()
            .take(4)
            .map(|(p, v)| format!("{p}={v}"))
            .collect();
        let more = if m.packages.len() > 4 {
            format!(" (+{})", m.packages.len() - 4)
        } else {
            String::new()
        };
        println!(
            "{:<20} {:<20} {:>9} {:<7} {:<14} {}{more}",
            name,
            short(&m.digest.to_string()),
            human(m.size),
            format!("{:?}", m.format).to_lowercase(),
            parent,
            pkgs.join(" ")
        );
    }
    Ok(0)
}

fn import(a: ImportArgs) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let m = corral_images::oci::import(&store, &a.file, a.name.as_deref(), &Default::default())
        .with_context(|| format!("importing {}", a.file.display()))?;
    println!("{} {} {}", m.name, m.digest, human(m.size));
    Ok(0)
}

fn export(a: ExportArgs) -> anyhow::Result<i32> {
    let store = a.store.open()?;
    let out = std::fs::File::create(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    corral_images::export::export(&store, &a.name, std::io::BufWriter::new(out))
        .with_context(|| format!("exporting {}", a.name))?;
    println!("wrote {}", a.output.display());
    Ok(0)
}

fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}

fn human(bytes: u64) -> String {
    let mb = bytes as f64 / (1 << 20) as f64;
    if mb >= 1024.0 {
        format!("{:.1}G", mb / 1024.0)
    } else {
        format!("{mb:.1}M")
    }
}

/// Resolve `--image NAME` for `corral sandbox run` from the store in `data_dir`.
pub fn sandbox_image(data_dir: &Path, name: &str) -> anyhow::Result<corral_sandbox::Image> {
    let store = Store::open(data_dir)
        .with_context(|| format!("opening the image store in {}", data_dir.display()))?;
    let r = store.resolve(name)?;
    Ok(corral_sandbox::Image {
        name: r.name,
        layers: r.layers,
        host_binds: Vec::new(),
        env: r.env,
    })
}
