-- A group's proximity radius in metres (0: no proximity alerts); location tokens carry it.
ALTER TABLE groups ADD COLUMN proximity_radius_m BIGINT NOT NULL DEFAULT 200
    CHECK (proximity_radius_m = 0 OR proximity_radius_m BETWEEN 25 AND 10000);
