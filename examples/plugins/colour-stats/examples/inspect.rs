//! Lists the plugins in a directory, or checks one library, with the same
//! library calls `lsd-tui plugins` and `lsd-tui plugins check PATH` use.
//!
//! ```text
//! cargo run -p lsd-plugin-colour-stats --example inspect -- target/debug
//! cargo run -p lsd-plugin-colour-stats --example inspect -- target/debug/liblsd_plugin_colour_stats.so
//! ```

use std::path::PathBuf;

use lsd_core::plugin::discovery;
use lsd_core::plugin::PluginInfo;

fn print_info(info: &PluginInfo) {
    println!("{} {} — {}", info.name, info.version, info.description);
    for p in &info.params {
        println!("    {:<12} {:<10} default {:<6} {}", p.name, p.ty, p.default, p.help);
    }
}

fn main() -> lsd_core::Result<()> {
    let Some(arg) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: inspect DIR | LIBRARY");
        std::process::exit(2);
    };
    if arg.is_dir() {
        for found in discovery::list(&[arg]) {
            println!("{}", found.path.display());
            match &found.status {
                Ok(listed) => {
                    print!("  ");
                    print_info(&listed.info);
                    println!("    built with: {}", listed.fingerprint);
                }
                Err(e) => println!("  unusable: {e}"),
            }
        }
        return Ok(());
    }
    let report = discovery::check(&arg)?;
    print_info(&report.listed.info);
    println!("built with: {}", report.listed.fingerprint);
    println!("smoke test: loss {:.6}, gradients for {}", report.smoke_value, report.smoke_gradients.join(", "));
    Ok(())
}
