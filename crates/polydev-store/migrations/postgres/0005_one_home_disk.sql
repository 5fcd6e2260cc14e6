-- Admission (postgres): a user's home disk is attached to one live VM at most,
-- enforced by the store so that two concurrent creates cannot both win.
ALTER TABLE vms ADD COLUMN home_disk BOOLEAN NOT NULL DEFAULT FALSE;
CREATE UNIQUE INDEX vms_one_home_disk ON vms (user_id)
    WHERE home_disk = TRUE AND status IN ('creating', 'running', 'hibernated');
