"""``revproxy ctl show cache`` and ``ctl cache purge HOST[/PREFIX]``.

Rule of this room: the cache is per process (content/cache.py), so every command goes to
every process that serves: each worker over its channel (op ``cache``), or the master's own
generation when it serves alone; the answers are added up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # control.py imports the workers, which import this module
    from revproxy.edge.generation import Generation
    from revproxy.runtime.control import InstanceView

__all__ = ["cache_command", "cache_op"]


def cache_op(gen: Generation | None, msg: dict[str, Any]) -> dict[str, Any]:
    """One process's part: ``{"cache": describe()}`` or ``{"purged": n}``."""
    cache = gen.cache if gen is not None else None
    if cache is None:
        return {"cache": None, "purged": 0}
    if msg.get("action") == "purge":
        return {"purged": cache.purge(str(msg.get("host", "")), str(msg.get("prefix", "/")))}
    return {"cache": cache.describe()}


async def cache_command(inst: InstanceView, args: list[str]) -> tuple[bool, str]:
    """``show cache`` (args empty) or ``cache purge HOST[/PREFIX]``."""
    msg: dict[str, Any] = {"op": "cache", "action": "show"}
    if args:
        if len(args) != 2 or args[0] != "purge" or not args[1]:
            return False, "usage: cache purge HOST[/PATH-PREFIX]   (HOST may be *)"
        host, slash, rest = args[1].partition("/")
        msg.update(action="purge", host=host.lower(), prefix="/" + rest if slash else "/")
    if inst.workers is not None:
        answers = await inst.workers.ask_all(msg)
    else:
        answers = [cache_op(inst.generation, msg)]
    if msg["action"] == "purge":
        n = sum(int(a.get("purged") or 0) for a in answers)
        where = f"{len(answers)} process{'es' if len(answers) != 1 else ''}"
        return True, f"purged {n} stored response{'s' if n != 1 else ''} in {where}"
    tables = [a["cache"] for a in answers if isinstance(a.get("cache"), dict)]
    if not tables:
        return True, "no cache (no route has cache = {...})"
    total: dict[str, int] = {}
    for t in tables:
        for k, v in t.items():
            if k in ("size", "max_object"):
                total[k] = int(v)
            else:
                total[k] = total.get(k, 0) + int(v)
    lines = [f"cache: {len(tables)} process{'es' if len(tables) != 1 else ''} (one cache each)"]
    lines += [f"  {k}: {v}" for k, v in total.items()]
    return True, "\n".join(lines)
