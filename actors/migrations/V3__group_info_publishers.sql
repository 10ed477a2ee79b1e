-- Who published each group's kept GroupInfo, and its size (NULL: kept from
-- before this migration, charged to nobody). A device's quota of stored
-- GroupInfo bytes is the sum over the groups it published in, read through the
-- index: no row per device to lock, so writers on several nodes cannot
-- deadlock over it.
ALTER TABLE groups ADD COLUMN publisher BYTEA, ADD COLUMN group_info_bytes BIGINT;
CREATE INDEX groups_by_publisher ON groups (publisher) WHERE publisher IS NOT NULL;
