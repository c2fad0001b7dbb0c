-- Access log lines made from TPC-H lineitem: the input of the `parse`
-- example stages (examples/stages/README.md). A line whose comment says
-- "furiously" is its comment instead, which is not a log line: the stages
-- report those as MALFORMED row errors.
SELECT
    l_orderkey * 8 + l_linenumber AS id,
    -- coalesce: neither branch is ever NULL, but only coalesce with a
    -- literal makes the planner know it (the stages declare `line` not null)
    arrow_cast(coalesce(
        CASE WHEN l_comment LIKE '%furiously%' THEN l_comment
        ELSE concat(
            '10.', CAST(l_suppkey % 256 AS VARCHAR), '.', CAST(l_partkey % 256 AS VARCHAR), '.',
            CAST(l_linenumber AS VARCHAR), ' - - [', CAST(l_shipdate AS VARCHAR), ' 00:00:00] "',
            CASE l_returnflag WHEN 'R' THEN 'POST' ELSE 'GET' END,
            ' /orders/', CAST(l_orderkey AS VARCHAR), '/lines/', CAST(l_linenumber AS VARCHAR),
            '?mode=', replace(l_shipmode, ' ', '+'), ' HTTP/1.1" ',
            CASE l_linestatus WHEN 'O' THEN '200' ELSE '404' END, ' ',
            CASE WHEN l_discount = 0 THEN '-' ELSE CAST(CAST(l_extendedprice AS BIGINT) AS VARCHAR) END)
        END, ''),
        'Utf8') AS line
FROM lineitem
