"""Who may do what: an optional ``roles.toml`` at the registry root.

    [users]
    alice = ["admin"]
    bob = ["training"]
    carol = ["production", "training"]
    "*" = ["production"]          # optional: everyone not listed

Roles (from the guide): ``training`` may export, ``production`` may deploy (and use), ``admin`` may
promote, deprecate and roll back, and also do everything the other two may. Reading (list, show, verify,
notes without --add) is open to all. Adding notes or scores needs any role. Without ``roles.toml``
everything is allowed: a one-person registry needs no setup. The user is ``$KOHYAWAN_USER``, else the
login name. This is a guard against mistakes, not security: anyone who can write the folder can edit it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from kohyawan.errors import BadInput, ConfigError
from kohyawan.files import toml

ROLES = ("training", "production", "admin")
FILE = "roles.toml"

# action -> roles that may do it (admin is added to every action)
ACTIONS: Mapping[str, tuple[str, ...]] = {
    "export": ("training",),
    "deploy": ("production",),
    "undeploy": ("production",),
    "promote": (),
    "deprecate": (),
    "rollback": (),
    "annotate": ("training", "production"),
}


class NotAllowed(BadInput):
    """The roles file does not give this user the role an action needs (exit 2: nothing was done)."""


def load(root: Path) -> dict[str, tuple[str, ...]] | None:
    """user -> roles, or None when the registry has no roles.toml."""
    path = Path(root) / FILE
    if not path.is_file():
        return None
    data = toml.read(path)
    users = data.get("users")
    extra = sorted(set(data) - {"users"})
    if not isinstance(users, dict) or extra:
        raise ConfigError(f"{path}: expected only a [users] table mapping a user to a list of roles")
    table: dict[str, tuple[str, ...]] = {}
    for user, roles in users.items():
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ConfigError(f"{path}: roles of {user!r} must be a list of strings")
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise ConfigError(f"{path}: unknown role(s) {', '.join(unknown)} for {user!r}; roles are {', '.join(ROLES)}")
        table[user] = tuple(roles)
    return table


def allowed_roles(action: str) -> tuple[str, ...]:
    return ACTIONS[action] + ("admin",)


def roles_of(table: Mapping[str, tuple[str, ...]], user: str) -> tuple[str, ...]:
    """The roles ``user`` holds under a loaded roles.toml: their own entry, else the ``*`` entry's."""
    return tuple(table.get(user, table.get("*", ())))


def check(root: Path, action: str, user: str) -> None:
    """Raise NotAllowed when roles.toml exists and ``user`` holds none of the roles ``action`` needs."""
    table = load(root)
    if table is None:
        return
    needed = allowed_roles(action)
    have = roles_of(table, user)
    if any(r in needed for r in have):
        return
    holders = sorted(u for u, roles in table.items() if any(r in needed for r in roles))
    raise NotAllowed(
        f"user {user!r} may not {action} in this registry: {action} needs role "
        f"{' or '.join(needed)} ({', '.join(holders) or 'nobody'} may); {user!r} has "
        f"{', '.join(have) or 'no role'} (see {Path(root) / FILE})"
    )
