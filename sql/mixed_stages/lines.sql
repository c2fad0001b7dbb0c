-- The columns the example external stages read, in the exact types of
-- their manifests (examples/stages/README.md): Utf8 text, integer quantity,
-- float price.
SELECT
    l_orderkey,
    l_linenumber,
    arrow_cast(l_shipmode, 'Utf8') AS l_shipmode,
    CAST(l_quantity AS BIGINT) AS l_quantity,
    CAST(l_extendedprice AS DOUBLE) AS l_extendedprice
FROM lineitem
