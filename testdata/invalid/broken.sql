-- an incomplete WHERE clause
SELECT name FROM customers WHERE
