"""Command line: `gossipser COMMAND ...`. Parsing and printing only; the work lives elsewhere."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gossipser.errors import GossipserError

# the registry's names (gossipser.gossip.algorithms.ALGORITHMS; a test keeps them equal),
# written out so that parsing the command line imports neither numpy nor networkx and
# `simulate` can start its training processes first thing
ALGORITHMS = ("dpsgd", "fedavg", "gossip-learning", "gradient-tracking", "local", "pairwise",
              "push-sum")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("corpus and features")
    g.add_argument("--data", metavar="DIR",
                   help="corpus folder (default: the bundled synthetic corpus, generated once)")
    g.add_argument("--corpus", default="auto",
                   help="auto, ravdess, cremad, tess, emodb, generic, iemocap")
    g.add_argument("--emotions", help="class subset, e.g. neutral,happy,sad,angry or shared4, "
                   "five, iemocap4 (IEMOCAP's four classes, excited merged into happy)")
    g.add_argument("--iemocap-improvised-only", action="store_true", default=None,
                   help="IEMOCAP: keep the improvised dialogs, drop the scripted ones")
    g.add_argument("--n-mfcc", type=int, help="MFCC coefficients (default 13)")
    g.add_argument("--deltas", type=int, choices=(0, 1, 2),
                   help="append deltas (default 2: delta and delta-delta)")
    g.add_argument("--frame-ms", type=float, help="frame length in ms (default 20)")
    g.add_argument("--hop-ms", type=float, help="frame step in ms (default 20)")
    g.add_argument("--max-frames", type=int, help="fixed length for CNN/LSTM (default 150)")
    g.add_argument("--cmvn-scope", choices=("utterance", "speaker"),
                   help="normalise MFCCs by each speaker's own statistics (default) or "
                        "per utterance")
    g.add_argument("--cache-dir", metavar="DIR",
                   help="feature cache (default ~/.cache/gossipser or $GOSSIPSER_CACHE)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and training")
    g.add_argument("--model", choices=("dnn", "cnn", "lstm"), help="model family (default cnn)")
    g.add_argument("--width", type=int, help="model width (default 64)")
    g.add_argument("--dropout", type=float, help="dropout (default 0.3)")
    g.add_argument("--norm", choices=("batch", "group", "none"),
                   help="normalisation layers (default batch; group under DP-SGD)")
    g.add_argument("--bn-stats", choices=("speaker", "running"),
                   help="BatchNorm at inference: the speaker's own statistics (default) or the "
                        "running averages of training")
    g.add_argument("--epochs", type=int, help="training epochs (default 40)")
    g.add_argument("--batch-size", type=int, help="batch size (default 32)")
    g.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    g.add_argument("--class-balanced", action="store_true", help="inverse-frequency class weights")
    g.add_argument("--schedule", choices=("onecycle", "constant"),
                   help="learning rate over the planned steps (default onecycle: warm-up, "
                        "then cosine decay)")
    g.add_argument("--augment", metavar="LIST",
                   help="batch augmentation: shift, mask, both (default) or none")
    g.add_argument("--dp-epsilon", type=float, metavar="EPS",
                   help="DP-SGD to this epsilon per peer over the planned steps (noise calibrated)")
    g.add_argument("--dp-noise", type=float, metavar="SIGMA",
                   help="DP-SGD with this noise multiplier (epsilon is then reported)")
    g.add_argument("--dp-delta", type=float, help="DP-SGD delta (default 1e-5)")
    g.add_argument("--dp-clip", type=float,
                   help="DP-SGD per-utterance gradient norm bound (default 1)")
    g.add_argument("--seed", type=int, default=0)


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gossipser",
        description="Privacy-preserving speech emotion recognition by decentralized gossip "
                    "learning.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("synth", help="write the synthetic emotional speech corpus (WAV files)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--speakers", type=int, default=8)
    p.add_argument("--per-emotion", type=int, default=10)
    p.add_argument("--utterances-per-speaker", metavar="LO:HI",
                   help="uneven shards instead of --per-emotion: speaker sizes spread over "
                        "LO..HI utterances, classes unbalanced per speaker (e.g. 2:80)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--emotions", help="subset of the 8 RAVDESS emotions (default all)")

    p = sub.add_parser("train", help="centralized speaker-independent baseline (one machine)")
    _add_data_args(p)
    _add_model_args(p)
    p.add_argument("--test-speakers", metavar="LIST",
                   help="held-out speakers, e.g. 21,22,23,24 or an IEMOCAP session, Ses05 "
                   "(default: the last sixth; IEMOCAP: leave-one-session-out folds)")
    p.add_argument("--folds", type=int, help="K-fold cross-validation by speaker instead (by "
                   "session where the corpus has sessions)")
    p.add_argument("--out", required=True, metavar="DIR")

    p = sub.add_parser("predict", help="predict the emotion of audio files with a saved model")
    p.add_argument("--model", required=True, metavar="DIR", help="folder written by train")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("simulate", help="simulate many gossip peers on one machine, with a "
                       "live convergence display")
    _add_data_args(p)
    _add_model_args(p)
    g = p.add_argument_group("gossip")
    g.add_argument("--topology", help="auto, ring, torus, regular:4, smallworld:4:0.2, er:0.2, "
                   "complete, star, hypercube, expo, or a file (default auto: regular:4 "
                   "when there are 5 peers or more, else complete)")
    g.add_argument("--algorithm", help=f"{', '.join(ALGORITHMS)} (default gradient-tracking: "
                   "D-PSGD with drift correction)")
    g.add_argument("--rounds", type=int, help="rounds at most (default 300; the run stops "
                   "earlier on a plateau, see --patience)")
    g.add_argument("--patience", type=int, help="plateau window in rounds (default 10; "
                   "0 runs every round)")
    g.add_argument("--local-epochs", type=float, help="local epochs per round (default: the "
                   "steps that match centralized training's budget over the rounds)")
    g.add_argument("--step-share", choices=("samples", "equal"),
                   help="the automatic budget per peer: in proportion to its shard (default, as "
                        "pooled training weighs every utterance) or equal for all peers")
    g.add_argument("--peers", type=int, help="peers (default: one per training speaker)")
    g.add_argument("--partition", help="speaker (default), iid, balanced, dirichlet:ALPHA")
    g.add_argument("--mixing", help="metropolis (default), maxdegree, weight")
    g.add_argument("--drop", type=float, help="message drop probability")
    g.add_argument("--churn", type=float, help="per-round probability a peer is offline "
                   "(virtual clock: the share of time)")
    g.add_argument("--stragglers", type=float, help="probability a peer does 10-50%% of its steps")
    g.add_argument("--fraction", type=float, help="FedAvg: share of clients per round")
    g.add_argument("--eval-every", type=int, help="evaluate every N rounds (default 1)")
    g.add_argument("--workers", type=int, help="training processes or Ray actors (default 2)")
    g.add_argument("--backend", choices=("process", "ray"), help="where the peers' trainers "
                   "live: a local process pool (default) or Ray actors (pip install "
                   "'gossipser[ray]')")
    g.add_argument("--ray-address", metavar="HOST:PORT", help="join the Ray cluster started "
                   "there with `ray start --head` (default: a local Ray)")
    g.add_argument("--init", choices=("shared", "independent", "perturbed"),
                   help="initial models: one for all peers from the run seed (default); one "
                   "per peer from its own seed (independent); or the shared one plus a secret "
                   "offset per peer of the initialiser's spread, 0.1 on a norm layer's scale "
                   "and shift (perturbed). No neighbour knows an independent or perturbed "
                   "start")
    g.add_argument("--private-layers", metavar="LIST", type=_names,
                   help="layers that never leave a peer: first, last, bn-stats (every "
                   "BatchNorm's running statistics), bn (every BatchNorm layer whole) or "
                   "module names (e.g. features.0.0), comma-separated")
    g.add_argument("--robust", metavar="RULE", help="Byzantine-robust merge for dpsgd, "
                   "gradient-tracking and gossip-learning: none (default), trimmed-mean:K, "
                   "median, krum:F, clip:TAU, clip:auto")
    g.add_argument("--byzantine", metavar="COUNT|IDS", help="simulated attackers: a count "
                   "drawn from the seed (2) or peer ids (3,7 or ids:3)")
    g.add_argument("--attack", metavar="ATTACK", help="what the Byzantine peers do: signflip "
                   "(default), scale:X, gaussian:S, labelflip, stale")
    v = p.add_argument_group("virtual clock (--clock virtual)")
    v.add_argument("--clock", choices=("rounds", "virtual"), help="lock-step rounds (default) "
                   "or events in virtual seconds: devices at their own speed, links with "
                   "latency and bandwidth; gossip-learning, pairwise and push-sum run with no "
                   "round barrier")
    v.add_argument("--device-speed", metavar="SPEC", help="per-peer compute speed: equal "
                   "(default) or lognormal:MU:SIGMA, optionally ,slow:FRACTION:FACTOR")
    v.add_argument("--step-time", type=float, metavar="S", help="seconds per optimiser step "
                   "at speed 1 (default 0.05)")
    v.add_argument("--latency", type=float, metavar="S", help="seconds per message on a link "
                   "(default 0.05; a JSON topology's edge attribute wins)")
    v.add_argument("--bandwidth", type=float, metavar="B/S", help="bytes per second on a link "
                   "(default 1.25e6, 10 Mbit/s; a JSON topology's edge attribute wins)")
    v.add_argument("--churn-period", type=float, metavar="S", help="mean seconds of an "
                   "offline spell (default 60)")
    v.add_argument("--wait", type=float, metavar="S", help="dpsgd and gradient-tracking: "
                   "seconds a peer waits for its neighbours (default: twice the slowest "
                   "device's round plus a transfer)")
    p.add_argument("--test-speakers", metavar="LIST", help="held-out speakers (default: the "
                   "last sixth; IEMOCAP: the last session)")
    p.add_argument("--record-messages", type=int, default=0, metavar="ROUNDS",
                   help="keep what every peer sends in the first ROUNDS rounds "
                   "(OUT/messages.npz, for gossipser attack)")
    p.add_argument("--display", choices=("live", "plain", "none"),
                   help="live view (default on a terminal), plain lines, or nothing")
    p.add_argument("--config", metavar="FILE.toml", help="run config (flags override it)")
    p.add_argument("--out", required=True, metavar="DIR")

    p = sub.add_parser("attack", help="infer a speaker attribute (gender) from what a "
                       "simulated run's peers sent, by shadow training")
    p.add_argument("--run", required=True, metavar="OUT",
                   help="a simulate --out folder run with --record-messages")
    p.add_argument("--attribute-file", metavar="CSV", help="rows speaker,value (default: "
                   "RAVDESS actor parity, or speakers.csv in the corpus folder)")
    p.add_argument("--shadow-runs", type=int, default=4,
                   help="shadow runs per fold (default 4)")
    p.add_argument("--folds", type=int, default=2, help="folds over the peers (default 2)")
    p.add_argument("--controls", type=int, default=10,
                   help="repeats of the attack with the attribute shuffled (default 10)")
    p.add_argument("--workers", type=int, default=2, help="training processes (default 2)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("peer", help="run one networked peer (TCP or MQTT); peers differ "
                       "only by --id")
    p.add_argument("--id", type=int, required=True, help="this peer's node id (0..N-1)")
    p.add_argument("--config", required=True, metavar="FILE.toml", help="the shared run config")
    p.add_argument("--mode", choices=("gossip", "fedavg"), default="gossip",
                   help="gossip (default: the config's algorithm) or fedavg (talk to the server)")
    p.add_argument("--out", metavar="DIR", help="metrics, checkpoint, model (default "
                   "runs/<run>/peer-<id>)")
    p.add_argument("--data", metavar="DIR", help="override [data] path")
    p.add_argument("--byzantine", metavar="ATTACK", help="make this peer attack, to test "
                   "robust merges: signflip, scale:X, gaussian:S, labelflip, stale")

    p = sub.add_parser("server", help="run the FedAvg aggregation server (for comparison)")
    p.add_argument("--config", required=True, metavar="FILE.toml")
    p.add_argument("--out", metavar="DIR", help="default runs/<run>/server")
    p.add_argument("--data", metavar="DIR", help="override [data] path")

    p = sub.add_parser("keys", help="make a run CA and a key and certificate per peer, for "
                       "signed frames and TLS ([network] keys = DIR)")
    p.add_argument("--peers", type=int, required=True, help="peers of the run")
    p.add_argument("--out", required=True, metavar="DIR", help="a new folder")
    p.add_argument("--host", action="append", default=[], metavar="HOST",
                   help="a host name or address the certificates also name (repeatable; "
                   "127.0.0.1, ::1 and localhost always)")

    p = sub.add_parser("topology", help="show or write a peer topology")
    tsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = tsub.add_parser("show", help="nodes, degrees, diameter and spectral gap")
    t.add_argument("spec", metavar="FILE|SPEC")
    t.add_argument("--peers", type=int)
    t.add_argument("--mixing", default="metropolis")
    t.add_argument("--seed", type=int, default=0)
    t = tsub.add_parser("make", help="write a generated topology to a file")
    t.add_argument("spec", metavar="SPEC")
    t.add_argument("--peers", type=int, required=True)
    t.add_argument("--out", required=True, metavar="FILE", help=".txt edge list or .json")
    t.add_argument("--seed", type=int, default=0)
    return parser


def dispatch(args: argparse.Namespace) -> int:
    """Run the subcommand `args.command` (its module is imported only then)."""
    if args.command == "attack":
        from gossipser.cli import attack

        return attack.cmd_attack(args)
    if args.command in ("peer", "server", "keys"):
        from gossipser.cli import deploy

        return {"peer": deploy.cmd_peer, "server": deploy.cmd_server,
                "keys": deploy.cmd_keys}[args.command](args)
    from gossipser.cli import commands

    return getattr(commands, f"cmd_{args.command}")(args)


def main(argv: Sequence[str] | None = None) -> int:
    from gossipser.cli import started

    started.mark()
    args = build_parser().parse_args(argv)
    early = _start_workers(args)
    try:
        if args.command != "simulate":  # its training processes do the torch work
            from gossipser.learn.workers import torch_threads

            torch_threads()
        return int(dispatch(args) or 0)
    except GossipserError as exc:
        from gossipser.ui.report import error_line

        error_line(str(exc))
        return 2
    except KeyboardInterrupt:
        from gossipser.ui.report import error_line

        error_line("interrupted")
        return 130
    finally:
        if early is not None:
            early.close(now=True)  # still ours only when the run never started


def _start_workers(args: argparse.Namespace):
    """`simulate`: start its training processes now, before this process imports torch, so
    that their imports run beside ours and the corpus reading (`args.workers_started`)."""
    if args.command != "simulate":
        return None
    from gossipser.config import read_toml
    from gossipser.learn.workers import WorkerProcesses, planned_workers

    try:
        n = planned_workers(args.workers, args.backend, read_toml(args.config))
    except GossipserError:  # the command says what is wrong with the config
        return None
    args.workers_started = WorkerProcesses(n) if n else None
    return args.workers_started


if __name__ == "__main__":
    sys.exit(main())
