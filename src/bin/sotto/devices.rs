//! `sotto devices`: lists audio input and output devices with their supported configurations.

use clap::Args;
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
}

/// Prints the device list; fails only when the host cannot enumerate at all.
pub fn run(args: DevicesArgs) -> Result<(), sotto::media::DeviceError> {
    let devices = sotto::media::list_devices()?;
    let show_in = !args.outputs;
    let show_out = !args.inputs;
    let mut shown = 0;
    for d in &devices {
        let has_in = !d.input_configs.is_empty();
        let has_out = !d.output_configs.is_empty();
        if !((show_in && has_in) || (show_out && has_out)) {
            continue;
        }
        shown += 1;
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
        if show_in {
            for c in &d.input_configs {
                println!("  input:  {c}");
            }
        }
        if show_out {
            for c in &d.output_configs {
                println!("  output: {c}");
            }
        }
    }
    if shown == 0 {
        println!(
            "no audio devices found (no sound card or sound server); \
             use --input file.wav / --output file.wav instead"
        );
    }
    Ok(())
}
