-- Stage 1: price every line item.
-- revenue is the discounted price, charge adds the tax (TPC-H Q1's terms).
SELECT
    l_orderkey,
    l_linenumber,
    l_partkey,
    l_suppkey,
    l_quantity,
    l_extendedprice,
    l_discount,
    l_tax,
    l_returnflag,
    l_linestatus,
    l_shipdate,
    l_shipmode,
    l_extendedprice * (1 - l_discount) AS revenue,
    l_extendedprice * (1 - l_discount) * (1 + l_tax) AS charge
FROM lineitem
