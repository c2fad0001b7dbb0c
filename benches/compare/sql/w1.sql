-- Workload 1 (the same text runs in sluice, DataFusion and DuckDB).
SELECT l_orderkey, l_partkey, l_suppkey, l_linenumber, l_quantity,
       l_extendedprice, l_discount, l_tax, l_returnflag, l_linestatus,
       l_shipdate, l_shipmode,
       l_extendedprice * (1 - l_discount) * (1 + l_tax) AS charge
FROM lineitem
WHERE l_shipdate >= DATE '1995-01-01' AND l_quantity < 40
