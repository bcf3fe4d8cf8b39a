"""Operations on a running system beyond deploys: backups and restore."""
