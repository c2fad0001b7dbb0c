-- DuckDB's own reading of the orders_enrich inputs ({DATA} = testdata/shop).
CREATE VIEW orders AS
SELECT * FROM read_json(['{DATA}/orders/2024-01.jsonl', '{DATA}/orders/2024-02.jsonl.gz', '{DATA}/orders/2024-03.jsonl.zst'],
    format = 'newline_delimited',
    columns = {order_id: 'BIGINT', customer_id: 'BIGINT', ordered_at: 'TIMESTAMP', quantity: 'INTEGER',
               unit_price: 'DECIMAL(10,2)', coupon: 'VARCHAR'});
CREATE VIEW customers AS SELECT * FROM read_csv('{DATA}/customers.csv', header = true);
