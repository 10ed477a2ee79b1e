-- Identity keys of removed devices and of deleted accounts' devices, and when
-- they were retired (ms since the Unix epoch). A retired key never registers or
-- logs in again: a thief holding a removed device stays out for good.
CREATE TABLE retired_devices (
    device     BYTEA  PRIMARY KEY,
    retired_ms BIGINT NOT NULL
);
