SELECT l_orderkey, l_linenumber, CAST(l_shipmode AS VARCHAR) AS l_shipmode,
       CAST(l_quantity AS BIGINT) AS l_quantity, CAST(l_extendedprice AS DOUBLE) AS l_extendedprice,
       CASE CAST(l_shipmode AS VARCHAR)
           WHEN 'AIR' THEN 'air' WHEN 'REG AIR' THEN 'air' WHEN 'MAIL' THEN 'mail' WHEN 'SHIP' THEN 'sea'
           WHEN 'RAIL' THEN 'ground' WHEN 'TRUCK' THEN 'ground' WHEN 'FOB' THEN 'ground' END AS ship_class,
       CAST(l_shipmode AS VARCHAR) IN ('AIR', 'REG AIR') AS is_air
FROM lineitem
WHERE l_quantity <= 45
