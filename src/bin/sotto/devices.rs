//! `sotto devices`: lists audio input and output devices with what a call can use of them.

use clap::Args;
use sotto::media::DeviceInfo;
use sotto::text::Printable;

/// Arguments of `sotto devices`.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Show only input devices.
    #[arg(long, conflicts_with = "outputs")]
    pub inputs: bool,
    /// Show only output devices.
    #[arg(long)]
    pub outputs: bool,
    /// Print every device with every configuration range it reports, as one JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Prints the device list; fails only when the host cannot enumerate at all.
pub fn run(args: DevicesArgs) -> Result<(), sotto::media::DeviceError> {
    let show_in = !args.outputs;
    let show_out = !args.inputs;
    let devices: Vec<DeviceInfo> = sotto::media::list_devices()?
        .into_iter()
        .filter(|d| (show_in && !d.inputs.is_empty()) || (show_out && !d.outputs.is_empty()))
        .collect();
    if args.json {
        // Serialising plain strings, numbers and bools cannot fail.
        println!(
            "{}",
            serde_json::to_string_pretty(&devices).unwrap_or_default()
        );
        return Ok(());
    }
    for d in &devices {
        let mut tags = Vec::new();
        if d.default_input {
            tags.push("default input");
        }
        if d.default_output {
            tags.push("default output");
        }
        let tags = if tags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", tags.join(", "))
        };
        // Names come from drivers and sound servers: print them escaped.
        println!("{}{tags}\n  id: {}", Printable(&d.name), Printable(&d.id));
        if show_in && let Some(line) = DeviceInfo::summary(&d.inputs) {
            println!("  input:  {line}");
        }
        if show_out && let Some(line) = DeviceInfo::summary(&d.outputs) {
            println!("  output: {line}");
        }
    }
    if devices.is_empty() {
        println!(
            "no audio devices found (no sound card or sound server); \
             use --input file.wav / --output file.wav instead"
        );
    }
    Ok(())
}
