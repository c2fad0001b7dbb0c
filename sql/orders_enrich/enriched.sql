-- Stage 1: join every order to its customer (orders of unknown customers are
-- kept, with country 'unknown'), and derive the order date and the amount
-- after the coupon's discount.
SELECT
    o.order_id,
    o.customer_id,
    c.name AS customer_name,
    COALESCE(c.country, 'unknown') AS country,
    COALESCE(c.tier, 'none') AS tier,
    CAST(o.ordered_at AS DATE) AS order_date,
    o.ordered_at,
    o.quantity,
    o.unit_price,
    o.coupon,
    -- discounts as exact decimals (a bare 0.80 would be a float in DataFusion)
    CAST(o.quantity * o.unit_price
         * CAST(CASE o.coupon WHEN 'VIP' THEN '0.80' WHEN 'WELCOME' THEN '0.90' WHEN 'SPRING' THEN '0.95' ELSE '1.00' END
                AS DECIMAL(3, 2))
         AS DECIMAL(12, 2)) AS amount
FROM orders o
LEFT JOIN customers c ON o.customer_id = c.customer_id
