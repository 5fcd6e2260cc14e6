-- Admission (sqlite): a user's home disk is attached to one live VM at most,
-- enforced by the store so that two concurrent creates cannot both win.
ALTER TABLE vms ADD COLUMN home_disk INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX vms_one_home_disk ON vms (user_id)
    WHERE home_disk = 1 AND status IN ('creating', 'running', 'hibernated');
