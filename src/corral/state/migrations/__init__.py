"""corral's Alembic migrations; applied by `corral.state.upgrade` and `corral db upgrade`."""
