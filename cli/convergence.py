"""How the CLI shows convergence: predictions, policies and the steps a policy took."""

from rich.console import Console

from ferry.cli.output import plain
from ferry.proto.api import PlanReply
from ferry.proto.convergence import POLICIES, Prediction
from ferry.proto.session import Session

MIB = 1024 * 1024

POSTCOPY_WARNING = (
    "post-copy runs the guest on the destination before all its memory is there: "
    "if the network fails during post-copy, the guest is lost"
)


def policies_help() -> str:
    return "; ".join(f"{p.name}: {p.description}" for p in POLICIES.values())


def prediction_line(p: Prediction) -> str:
    rates = f"dirties {p.dirty_rate_bps / MIB:.1f} MiB/s, copies {p.bandwidth_bps / MIB:.1f} MiB/s"
    if p.converges:
        return (
            f"converges with plain pre-copy ({rates}): about {p.expected_total_ms / 1000:.1f} s, "
            f"{p.iterations} iterations, downtime about {p.expected_downtime_ms} ms"
        )
    steps = ", then ".join(p.steps_needed) or "nothing the policy has"
    return f"does not converge with plain pre-copy ({rates}); needs: {steps}"


def print_plan(plan: PlanReply, console: Console) -> None:
    where = plan.dest or "nowhere: no host can take it"
    console.print(plain(f"dry run: {plan.vm} would move {plan.source} -> {where} (policy {plan.policy}); nothing moves"))
    if len(plan.candidates) > 1:
        unshown = plan.candidate_count - len(plan.candidates)
        more = f" and {unshown:,} more" if unshown > 0 else ""
        console.print(plain(f"  then, if it declines: {', '.join(plan.candidates[1:])}{more}"))
    for why in plan.rejections:
        console.print(plain(f"  not {why}"))
    if plan.prediction is not None:
        console.print(plain(f"  prediction: {prediction_line(plan.prediction)}"))
        if plan.prediction.reason:
            console.print(plain(f"  {plan.prediction.reason}"))
    elif plan.note:
        console.print(plain(f"  {plan.note}"))


def print_convergence(s: Session, console: Console) -> None:
    """Predicted against actual, then every step the policy took with its sample."""
    if s.prediction is not None:
        console.print(plain(f"  predicted: {prediction_line(s.prediction)}"))
        if s.outcome is not None:
            console.print(
                f"  actual: {s.outcome.total_time_ms / 1000:.1f} s, downtime {s.outcome.downtime_ms} ms",
                highlight=False,
            )
    start = s.history[0].at if s.history else s.created_at
    for a in s.steering:
        sample = a.sample
        seen = (
            f" [iteration {sample.iteration}, {sample.data_remaining / MIB:.1f} MiB left, "
            f"{sample.bandwidth_bps / MIB:.1f} MiB/s, dirty {sample.dirty_rate_bps / MIB:.1f} MiB/s]"
            if sample
            else ""
        )
        console.print(plain(f"  +{a.at - start:7.2f}s  policy {a.kind}: {a.reason}{seen}"))
