-- Who published each group's kept GroupInfo (NULL: kept from before this
-- migration, charged to nobody), and per device the bytes of the GroupInfos it
-- published that are still kept: its quota of stored GroupInfo bytes.
ALTER TABLE groups ADD COLUMN publisher BYTEA;
CREATE TABLE published_bytes (
    device BYTEA  PRIMARY KEY,
    bytes  BIGINT NOT NULL
);
