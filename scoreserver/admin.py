"""The review console at /admin: the CLI's review operations behind an admin password."""

from __future__ import annotations

ADMIN_PASSWORD_SETTING = "admin_password_hash"
