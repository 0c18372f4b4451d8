"""The ``[notify]`` table's rules: which endings exist, a usable webhook, a command that
can start. The runtime (``lora_core.notify``) uses the same :func:`resolve_webhook`, so the
check and the run say the same thing. Pure Python.
"""

from __future__ import annotations

import shlex
import shutil

from lora_core.checks.problem import Problem, error, warning
from lora_core.notify import describe_webhook, resolve_webhook
from lora_core.profile import NOTIFY_STATUSES, NotifySection


def notify_problems(section: NotifySection) -> list[Problem]:
    found = []
    for status in section.on:
        if status not in NOTIFY_STATUSES:
            found.append(error(f"`[notify] on` holds {status!r}, which is not an ending: use "
                               f"some of {', '.join(NOTIFY_STATUSES)}",
                               section="notify", key="on"))
    if section.webhook.strip():
        url, problem = resolve_webhook(section.webhook)
        if url is None and section.webhook.strip().startswith("$") and "not set" in problem:
            # Set where the run starts (a service's environment), maybe not where it is
            # checked: say it, and the run reports it again if it is still missing.
            found.append(warning(problem, "export it before `lora-train run`, or the run "
                                 "ends without a webhook notification",
                                 section="notify", key="webhook"))
        elif url is None:
            found.append(error(problem, "write a URL like \"https://ntfy.sh/my-topic\" or "
                               "\"$NTFY_URL\"", section="notify", key="webhook"))
        elif not section.webhook.strip().startswith("$"):
            found.append(warning(
                f"`[notify] webhook` holds a literal URL ({describe_webhook(section.webhook)}); "
                "it is never logged or exported, but the profile file itself holds it",
                "to keep the secret out of the profile, put the URL in an environment "
                "variable and write webhook = \"$NTFY_URL\"", section="notify", key="webhook"))
    command = section.command.strip()
    if command:
        try:
            first = shlex.split(command)[0]
        except (ValueError, IndexError):
            first = ""
        if not first:
            found.append(error(f"`[notify] command` = {command!r} cannot be read as a shell "
                               "command (unbalanced quotes?)", section="notify",
                               key="command"))
        elif not any(c in command for c in "|;&$`><(") and "=" not in first \
                and shutil.which(first) is None:
            found.append(warning(f"`[notify] command` starts with {first!r}, which is not a "
                                 "program on PATH here", "install it or give its full path; "
                                 "a failing command never fails the run",
                                 section="notify", key="command"))
    return found
