-- Workload 2 (sluice and DataFusion; DuckDB's spelling is in peers.py).
SELECT e.event_id,
       CAST(e.event_time AS TIMESTAMP) AS event_time,
       e.key,
       e.value,
       COALESCE(e.category, 'none') AS category,
       e.device['os'] AS os,
       e.device['version'] AS os_version,
       cardinality(e.tags) AS tag_count,
       u.segment,
       u.region,
       CAST(CAST(e.event_time AS TIMESTAMP) AS DATE) AS event_date
FROM events e LEFT JOIN users u ON e.key = u.key
