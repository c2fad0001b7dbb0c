-- Stage 2: revenue per day and country, ranked within the day.
SELECT
    order_date,
    country,
    COUNT(*) AS orders,
    SUM(quantity) AS items,
    SUM(amount) AS revenue,
    RANK() OVER (PARTITION BY order_date ORDER BY SUM(amount) DESC, country) AS rank_in_day
FROM enriched
GROUP BY order_date, country
