"""Documents made from DOCX templates: contracts, invoices, acts (the make_document action).

`words` writes amounts and dates in Ukrainian and Russian, `render` computes a document's values
(rows, VAT, totals) and fills a template (docxtpl), then converts it to PDF (LibreOffice
headless), `numbering` gives each document its number once. Nothing here calls a vendor: the step
(pipeline/steps/make_document.py) attaches and sends what is made. docs/documents.md says how.
"""
