"""How lengths of time are written, the same in the CLI and the wizard: a duration (a run's
length, an ETA) as ``m:ss`` or ``h:mm:ss``, an age ("ended 12min ago") as 45s, 12min, 5h, 3d.
"""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """``4:05`` under an hour, ``1:02:03`` above."""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_age(seconds: float) -> str:
    """A short age: 45s, 12min, 5h, 3d."""
    seconds = int(max(0, seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}min"
    return f"{seconds // 3600}h" if seconds < 2 * 86400 else f"{seconds // 86400}d"
