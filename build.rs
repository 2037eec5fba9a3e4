//! Rebuilds when a file is added to `migrations/`: `sqlx::migrate!` embeds the directory's files,
//! and cargo only notices new ones when told to watch the directory.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
