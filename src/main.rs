use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "virtualfit",
    version,
    about = "GPU inference server for virtual try-on"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a load trace against a KEDA ScaledObject with the HPA's algorithm.
    Simulate(virtualfit::simulate::SimulateArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Simulate(args)) => virtualfit::simulate::run(&args),
        None => {
            println!("virtualfit");
            Ok(())
        }
    }
}
