//! The `fuse` command: parse arguments, set up logging, run, map errors to exit codes.

fn main() {
    println!("fuse");
}
