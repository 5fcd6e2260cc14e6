//! `polydev-streamer`: WebRTC streaming of an X display (see the library's
//! documentation and `docs/LIVE_VIEW.md`).
//!
//! `polydev-streamer [--display :1] [--port 7071] [--advertise 169.254.0.22]`
//! serves JSON-lines requests on stdin until stdin closes;
//! `polydev-streamer bench --display :N` prints per-stage timings.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use polydev_stream::pipeline::PipelineConfig;
use polydev_stream::{bench, control, Streamer, StreamerConfig};

const ABOUT: &str =
    "Streams an X display to one WebRTC viewer (VP8 video, input over a data channel).";

const LONG_ABOUT: &str = "\
Streams an X display to one WebRTC viewer: the screen is captured (MIT-SHM, DAMAGE), encoded as VP8
(libvpx, realtime) and sent over a WebRTC peer connection (str0m, ICE-lite, one UDP socket); the
viewer's data channel `input` carries pointer, wheel, key and paste messages that are injected with
XTest.

The polydev agent runs it as the guest user and drives it with one JSON object per line on stdin,
answered one line each on stdout (logs go to stderr; the streamer exits when stdin closes):

  {\"id\":1,\"op\":\"offer\",\"sdp\":\"v=0...\"}     -> {\"id\":1,\"answer\":\"v=0...\",\"candidates\":[...]}
  {\"id\":2,\"op\":\"candidate\",\"candidate\":\"candidate:...\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0}
                                              -> {\"id\":2,\"success\":true}
  {\"id\":3,\"op\":\"stats\"}                    -> {\"id\":3,\"connected\":true,\"codec\":\"VP8\",...}
  errors                                      -> {\"id\":1,\"error\":\"...\"}

A new offer replaces the current viewer. Log level: POLYDEV_STREAMER_LOG (e.g. debug,str0m=info).";

#[derive(Parser, Debug)]
#[command(name = "polydev-streamer", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// X display to capture and drive.
    #[arg(long, default_value = ":1", env = "DISPLAY")]
    display: String,
    /// Address to bind the UDP socket to.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// UDP port (0: any free port; the answer's candidate carries the real one).
    #[arg(long, default_value_t = polydev_core::guest::STREAM_PORT)]
    port: u16,
    /// Address advertised in the host candidate.
    #[arg(long, default_value = polydev_core::guest::GUEST_ADDR)]
    advertise: IpAddr,
    /// Most frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Target bitrate in kbit/s (CBR).
    #[arg(long, default_value_t = 3000)]
    bitrate: u32,
    /// libvpx cpu-used (VP8: -16..16, higher is faster).
    #[arg(long, default_value_t = 8, allow_negative_numbers = true)]
    cpu_used: i32,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure capture, conversion and encoding per frame on a display
    /// (draws on it between frames).
    Bench {
        /// X display to use.
        #[arg(long, env = "DISPLAY")]
        display: String,
        /// Frames to measure.
        #[arg(long, default_value_t = 60)]
        frames: usize,
        /// Target bitrate in kbit/s.
        #[arg(long, default_value_t = 3000)]
        bitrate: u32,
        /// libvpx cpu-used.
        #[arg(long, default_value_t = 8, allow_negative_numbers = true)]
        cpu_used: i32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn init_log() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("POLYDEV_STREAMER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,str0m=warn,dimpl=warn,is=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_log();
    if let Some(Command::Bench {
        display,
        frames,
        bitrate,
        cpu_used,
        json,
    }) = cli.command
    {
        return match bench::run(&display, frames.max(1), bitrate, cpu_used) {
            Ok(r) if json => {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(r) => {
                print!("{r}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("polydev-streamer bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let config = StreamerConfig {
        display: cli.display,
        bind: SocketAddr::new(cli.bind, cli.port),
        advertise: cli.advertise,
        video: PipelineConfig {
            fps: cli.fps.clamp(1, 120),
            bitrate_kbps: cli.bitrate.max(100),
            cpu_used: cli.cpu_used.clamp(-16, 16),
            refresh: Duration::from_secs(2),
        },
    };
    tracing::info!(
        "polydev-streamer {} (libvpx {})",
        env!("CARGO_PKG_VERSION"),
        polydev_stream::encode::libvpx_version()
    );
    let streamer = match Streamer::start(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("polydev-streamer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let streamer = std::sync::Arc::new(streamer);
    // A streamer whose display went away is useless: exit, the agent starts
    // a new one on the next offer.
    let watched = std::sync::Arc::downgrade(&streamer);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        let Some(s) = watched.upgrade() else { return };
        if let Some(e) = s.fatal() {
            eprintln!("polydev-streamer: {e}; exiting");
            std::process::exit(1);
        }
    });
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    let r = control::serve(&*streamer, stdin, stdout);
    // The last reference stops the threads (the watchdog holds one only
    // for a moment).
    drop(streamer);
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polydev-streamer: control channel: {e}");
            ExitCode::FAILURE
        }
    }
}
