-- Stage 2: keep the lines shipped from 1994 on in less than full pallets,
-- with the ship year for partition-friendly reporting.
-- The filter is written here, one stage after the scan; sluice fuses the two
-- stages into one DataFusion plan, so it runs right above the generator.
SELECT
    l_orderkey,
    l_linenumber,
    l_returnflag,
    l_linestatus,
    l_shipmode,
    l_shipdate,
    CAST(date_part('year', l_shipdate) AS INT) AS ship_year,
    l_quantity,
    revenue,
    charge
FROM priced
WHERE l_shipdate >= DATE '1994-01-01'
  AND l_quantity < 45
