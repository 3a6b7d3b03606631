-- Pending credential challenges are held in the server's memory
-- (configsrv/challenge): they live a minute, are spent by the first
-- completion attempt and are worth nothing after a restart, so writing
-- and deleting a row for each cost two write transactions per handshake
-- for nothing. Challenges pending when this runs are simply gone: their
-- agents attest again, as after an expiry. Never edit this file once
-- applied.
DROP TABLE challenges;
